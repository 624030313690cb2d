//! Built without the `s3` feature: `s3://` URLs are refused, naming the feature.

use std::path::Path;

use crate::error::{Error, Result, StoreError};

/// Whether `path` is an object-storage URL (`s3://...`).
pub(crate) fn is_url(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.starts_with("s3://"))
}

/// An upload (never made).
pub(crate) struct Upload;

impl Upload {
    pub(crate) fn wait(self) -> Result<()> {
        Ok(())
    }
}

/// Object storage, which this build cannot reach (never made).
pub(crate) struct Remote {
    pub(crate) zarr: zarrs::storage::ReadableWritableListableStorage,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Remote")
    }
}

#[allow(clippy::unused_self)]
impl Remote {
    pub(crate) fn open(url: &str) -> Result<Remote> {
        Err(Error::Store(StoreError::Remote {
            url: url.to_string(),
            reason: "this chunkwise was built without the `s3` feature".into(),
        }))
    }
    pub(crate) fn url(&self) -> &str {
        ""
    }
    pub(crate) fn get(&self, _: &str) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    pub(crate) fn size(&self, _: &str) -> Result<Option<u64>> {
        Ok(None)
    }
    pub(crate) fn put(&self, _: &str, _: Vec<u8>) -> Result<()> {
        Ok(())
    }
    pub(crate) fn put_async(&self, _: &str, _: Vec<u8>) -> Upload {
        Upload
    }
    pub(crate) fn list(&self) -> Result<Vec<(String, u64, String)>> {
        Ok(Vec::new())
    }
    pub(crate) fn list_under(&self, _: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    pub(crate) fn copy_from(&self, _: &Path, _: &str, _: &str) -> Result<bool> {
        Ok(false)
    }
    pub(crate) fn delete_key(&self, _: &str) -> Result<()> {
        Ok(())
    }
    pub(crate) fn delete_all(&self) -> Result<()> {
        Ok(())
    }
}
