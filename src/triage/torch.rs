//! The optional libtorch backend (cargo feature `tch-backend`): runs the TorchScript export of
//! HEMA3N-Core to check the ONNX path against the reference network. The only importer of `tch`.

use std::path::Path;

use super::features::{N_VITALS, TEXT_BUCKETS};
use super::runtime::{ModelError, ModelOutput};

/// A loaded TorchScript module.
pub struct TorchModel {
    module: tch::CModule,
}

impl TorchModel {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let module = tch::CModule::load(path).map_err(|e| ModelError::Session {
            model_id: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(TorchModel { module })
    }

    /// One inference (batch of 1) on CPU.
    pub fn infer(
        &self,
        vitals: &[f32; N_VITALS],
        text: &[f32; TEXT_BUCKETS],
    ) -> Result<ModelOutput, ModelError> {
        let err = |e: tch::TchError| ModelError::Inference(e.to_string());
        let v = tch::Tensor::from_slice(vitals).view([1, N_VITALS as i64]);
        let t = tch::Tensor::from_slice(text).view([1, TEXT_BUCKETS as i64]);
        let out = self
            .module
            .forward_is(&[tch::IValue::Tensor(v), tch::IValue::Tensor(t)])
            .map_err(err)?;
        let tch::IValue::Tuple(parts) = out else {
            return Err(ModelError::Inference(
                "TorchScript module must return a tuple".into(),
            ));
        };
        let mut vecs = Vec::with_capacity(3);
        for p in parts {
            let tch::IValue::Tensor(x) = p else {
                return Err(ModelError::Inference(
                    "tuple element is not a tensor".into(),
                ));
            };
            vecs.push(Vec::<f32>::try_from(x.flatten(0, -1)).map_err(err)?);
        }
        if vecs.len() != 3 || vecs[0].len() != 5 || vecs[1].len() != 9 || vecs[2].len() != 1 {
            return Err(ModelError::Inference("unexpected output shapes".into()));
        }
        let mut o = ModelOutput {
            esi_logits: [0.0; 5],
            specialty_logits: [0.0; 9],
            confidence: vecs[2][0],
        };
        o.esi_logits.copy_from_slice(&vecs[0]);
        o.specialty_logits.copy_from_slice(&vecs[1]);
        Ok(o)
    }
}
