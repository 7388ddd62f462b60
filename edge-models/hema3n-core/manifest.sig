{
  "format": "hema3n-model-signature/v1",
  "key_id": "0d68a616aa8722d1",
  "manifest_sha256": "262e6fd45b4a3f88bd4fb5337dcd05c1572d449cad7b7e4b1b695475fa4c66ae",
  "signature": "15mMz21HHafilf8O30vxvaRCCXHDfS7RxYTKZbeA7+JKtQRGezYoRAqovvftjWjVmN10esUcpa/QD587cuIDyQ=="
}
