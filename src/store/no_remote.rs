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

/// Uploads under way, oldest first, at most `max` of them: each carries a tag (what it
/// writes) handed back once its PUT has returned, so that a caller records only what is
/// stored. Encoding goes on while up to `max` PUTs are in flight.
pub(crate) struct Uploads<T> {
    queue: std::sync::Mutex<std::collections::VecDeque<(Upload, T)>>,
    max: usize,
}

impl<T> Uploads<T> {
    pub(crate) fn new(max: usize) -> Uploads<T> {
        Uploads {
            queue: std::sync::Mutex::default(),
            max,
        }
    }

    /// Queues `upload`; beyond `max` in flight, waits for the oldest and returns its tag.
    ///
    /// # Errors
    /// The oldest upload's.
    pub(crate) fn push(&self, upload: Upload, tag: T) -> Result<Option<T>> {
        let oldest = {
            let mut q = self.queue.lock().expect("no panics holding the queue");
            q.push_back((upload, tag));
            (q.len() > self.max).then(|| q.pop_front()).flatten()
        };
        match oldest {
            Some((u, tag)) => u.wait().map(|()| Some(tag)),
            None => Ok(None),
        }
    }

    /// Waits for every upload queued so far; their tags, oldest first.
    ///
    /// # Errors
    /// The first failed upload's.
    pub(crate) fn drain(&self) -> Result<Vec<T>> {
        let q = std::mem::take(&mut *self.queue.lock().expect("no panics holding the queue"));
        q.into_iter()
            .map(|(u, tag)| u.wait().map(|()| tag))
            .collect()
    }

    /// Uploads queued and not yet waited for.
    pub(crate) fn len(&self) -> usize {
        self.queue
            .lock()
            .expect("no panics holding the queue")
            .len()
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
