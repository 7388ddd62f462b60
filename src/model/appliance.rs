//! Closed code sets of the appliance itself: device presence, alarm kinds, outbox states.

named_enum! {
    /// What the broker last said about a device (retained `online`, will `offline`).
    pub enum Presence {
        /// Nothing heard since it was registered.
        Unknown = "unknown",
        Online = "online",
        Offline = "offline",
    }
}

named_enum! {
    /// Why an alarm was raised.
    pub enum AlarmKind {
        /// A device bound to a case stopped sending vitals.
        DeviceSilent = "device_silent",
        /// The data directory is short of space (nothing is dropped).
        DiskPressure = "disk_pressure",
        /// A territory key is older than `keys.rotate_after_days`.
        KeyRotationDue = "key_rotation_due",
        /// A TLS certificate expires within `keys.certificate_warn_days` (or has expired).
        CertificateExpiring = "certificate_expiring",
    }
}

named_enum! {
    /// Where an outbox row is in custody.
    pub enum OutboxState {
        /// Sealed and waiting to be published (or republished).
        Queued = "queued",
        /// The broker acknowledged it (PUBACK); custody continues until the receipt.
        Sent = "sent",
        /// A verified receipt named it: custody ended.
        Receipted = "receipted",
    }
}
