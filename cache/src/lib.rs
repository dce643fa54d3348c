//! Kiln's cache and artifact store: content-addressed blobs in a local directory (the default)
//! or an S3-compatible bucket, compressed with zstd and sealed with AES-256-GCM when a key is
//! configured. See [`store`] for how files move and [`codec`] for the stored format.

pub mod codec;
pub mod store;

pub use codec::EncryptionKey;
pub use store::{Backend, BlobStore, Digest, Metrics, Put, S3Config, StoreConfig, StoreError};
