//! Stores on S3-compatible object storage (`s3://bucket/prefix`, spec/SCALE.md §6), through
//! zarrs' object_store backend and its async-to-sync adapter: the rayon workers that read and
//! write local stores make blocking requests on one shared tokio runtime.
//!
//! Credentials and endpoint come from the usual environment: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` (an
//! S3-compatible server) and `AWS_ALLOW_HTTP` (plain http, e.g. a server on 127.0.0.1).
//! Transient failures are retried with exponential backoff (100 ms doubling to 5 s, up to
//! `CHUNKWISE_S3_RETRIES` times, default 5); the rest fail at once, naming the URL.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use zarrs::storage::ReadableWritableListableStorage;
use zarrs::storage::storage_adapter::async_to_sync::{
    AsyncToSyncBlockOn, AsyncToSyncStorageAdapter,
};
use zarrs_object_store::AsyncObjectStore;

use crate::error::{Error, Result, StoreError};

/// Whether `path` is an object-storage URL (`s3://...`).
pub(crate) fn is_url(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.starts_with("s3://"))
}

/// An upload under way ([`Remote::put_async`]).
pub(crate) struct Upload(tokio::task::JoinHandle<Result<()>>);

impl Upload {
    /// Waits for the upload to end.
    ///
    /// # Errors
    /// [`StoreError::Remote`] (the request failed after its retries, or its task was lost).
    pub(crate) fn wait(self) -> Result<()> {
        block_on(self.0).unwrap_or_else(|e| {
            Err(Error::Store(StoreError::Remote {
                url: String::new(),
                reason: format!("an upload's task ended abnormally: {e}"),
            }))
        })
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

/// An array's place on object storage.
pub(crate) struct Remote {
    url: String,
    /// The bucket, the whole of it (server-side copies name keys of other arrays), and the
    /// array's prefix in it.
    bucket: String,
    whole: Arc<dyn ObjectStore>,
    prefix: String,
    /// The array's prefix: keys are the array's own (`zarr.json`, `c/0/1`).
    root: Arc<dyn ObjectStore>,
    /// The same, as zarrs storage.
    pub(crate) zarr: ReadableWritableListableStorage,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2) // the connections' I/O only: the CPU work stays on rayon
            .thread_name("chunkwise-s3")
            .enable_all()
            .build()
            .expect("a tokio runtime starts (threads and an epoll instance)")
    })
}

fn block_on<F: Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

struct TokioBlockOn(tokio::runtime::Handle);

impl AsyncToSyncBlockOn for TokioBlockOn {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.0.block_on(future)
    }
}

fn remote_error(url: &str, e: &object_store::Error) -> Error {
    let text = e.to_string();
    // By the server's answer, never by digits that may be part of a port or a key.
    let hint = if text.contains("NoSuchBucket") {
        "the bucket does not exist"
    } else if text.contains("HTTP error") || text.contains("error sending request") {
        "cannot reach the server: check AWS_ENDPOINT_URL (and AWS_ALLOW_HTTP=true for http://)"
    } else if text.contains("InvalidAccessKeyId")
        || text.contains("SignatureDoesNotMatch")
        || text.contains("403 Forbidden")
        || matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        )
    {
        "access denied: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    } else {
        "the request failed"
    };
    // One line: the request and status, the server's error code, not its XML body.
    let code = text
        .split_once("<Code>")
        .and_then(|(_, r)| r.split_once("</Code>"))
        .map(|(c, _)| format!(" {c}"))
        .unwrap_or_default();
    let head: String = text
        .split("<?xml")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let head: String = head.trim_end_matches(':').chars().take(300).collect();
    Error::Store(StoreError::Remote {
        url: url.to_string(),
        reason: format!("{hint} ({head}{code})"),
    })
}

impl Remote {
    /// Connects to `url` (`s3://bucket[/prefix]`) and checks that the bucket answers.
    ///
    /// # Errors
    /// [`StoreError::Remote`] for a URL without a bucket, missing credentials, a bucket that
    /// does not exist, credentials the server refuses, or a server that cannot be reached.
    pub(crate) fn open(url: &str) -> Result<Remote> {
        let bad = |reason: String| {
            Error::Store(StoreError::Remote {
                url: url.to_string(),
                reason,
            })
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3:// URL".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() {
            return Err(bad("no bucket: give s3://BUCKET/PREFIX".into()));
        }
        let has_keys = std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
            && std::env::var_os("AWS_SECRET_ACCESS_KEY").is_some();
        let other_source = [
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
        if !has_keys && !other_source {
            return Err(bad(
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
                 AWS_ENDPOINT_URL for an S3-compatible server)"
                    .into(),
            ));
        }
        // TLS by rustls with ring (installing it twice is harmless).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let retries = std::env::var("CHUNKWISE_S3_RETRIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(RetryConfig {
                max_retries: retries,
                retry_timeout: Duration::from_secs(60),
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
            })
            .build()
            .map_err(|e| remote_error(url, &e))?;
        let whole: Arc<dyn ObjectStore> = Arc::new(store);
        let root: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(whole.clone(), prefix));
        // One listing tells a missing bucket, refused credentials and an unreachable server
        // apart (a missing object's HEAD cannot).
        block_on(root.list_with_delimiter(None)).map_err(|e| remote_error(url, &e))?;
        let zarr: ReadableWritableListableStorage = Arc::new(AsyncToSyncStorageAdapter::new(
            Arc::new(AsyncObjectStore::new(root.clone())),
            TokioBlockOn(runtime().handle().clone()),
        ));
        Ok(Remote {
            url: url.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            whole,
            prefix: prefix.to_string(),
            root,
            zarr,
        })
    }

    /// The URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The object at `key`, or `None`.
    ///
    /// # Errors
    /// [`StoreError::Remote`].
    pub(crate) fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match block_on(async {
            let r = self.root.get(&ObjPath::from(key)).await?;
            r.bytes().await
        }) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_error(&format!("{}/{key}", self.url), &e)),
        }
    }

    /// The size of the object at `key`, or `None`.
    ///
    /// # Errors
    /// [`StoreError::Remote`].
    pub(crate) fn size(&self, key: &str) -> Result<Option<u64>> {
        match block_on(self.root.head(&ObjPath::from(key))) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_error(&format!("{}/{key}", self.url), &e)),
        }
    }

    /// Writes the object at `key` whole (one PUT: a reader sees the old object or this one).
    ///
    /// # Errors
    /// [`StoreError::Remote`].
    pub(crate) fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        block_on(self.root.put(&ObjPath::from(key), PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| remote_error(&format!("{}/{key}", self.url), &e))
    }

    /// Starts writing the object at `key` on the runtime's threads and returns at once; the
    /// upload's outcome is [`Upload::wait`]'s.
    pub(crate) fn put_async(&self, key: &str, bytes: Vec<u8>) -> Upload {
        let root = self.root.clone();
        let path = ObjPath::from(key);
        let url = format!("{}/{key}", self.url);
        let task = runtime().spawn(async move {
            root.put(&path, PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| remote_error(&url, &e))
        });
        Upload(task)
    }

    /// Every key under the prefix with its size (and a version tag: its ETag or time).
    ///
    /// # Errors
    /// [`StoreError::Remote`].
    pub(crate) fn list(&self) -> Result<Vec<(String, u64, String)>> {
        use futures::TryStreamExt;
        block_on(self.root.list(None).try_collect::<Vec<_>>())
            .map(|v| {
                v.into_iter()
                    .map(|m| {
                        let tag = m
                            .e_tag
                            .clone()
                            .unwrap_or_else(|| m.last_modified.to_rfc3339());
                        (m.location.to_string(), m.size, tag)
                    })
                    .collect()
            })
            .map_err(|e| remote_error(&self.url, &e))
    }

    /// The keys under `sub` (a "directory" of the prefix, e.g. `.chunkwise-job/`), without
    /// listing the rest of the array.
    ///
    /// # Errors
    /// [`StoreError::Remote`].
    pub(crate) fn list_under(&self, sub: &str) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let p = ObjPath::from(sub);
        block_on(self.root.list(Some(&p)).try_collect::<Vec<_>>())
            .map(|v| v.into_iter().map(|m| m.location.to_string()).collect())
            .map_err(|e| remote_error(&format!("{}/{sub}", self.url), &e))
    }

    /// Copies the object `key` of the array at `from` (an `s3://` URL in this bucket) to `to`
    /// in this array, server-side (no bytes through this machine); `false` if there is none.
    ///
    /// # Errors
    /// [`StoreError::Remote`]; a source in another bucket (no server-side copy across them).
    pub(crate) fn copy_from(&self, from: &Path, key: &str, to: &str) -> Result<bool> {
        let src = from.to_string_lossy();
        let rest = src.strip_prefix("s3://").unwrap_or(&src);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket != self.bucket {
            return Err(Error::Store(StoreError::Remote {
                url: self.url.clone(),
                reason: format!(
                    "chunks are copied server-side, within one bucket: {src} is in another \
                     (copy it into s3://{}/ first, or join local stores)",
                    self.bucket
                ),
            }));
        }
        let join = |p: &str, k: &str| {
            let p = p.trim_matches('/');
            if p.is_empty() {
                ObjPath::from(k)
            } else {
                ObjPath::from(format!("{p}/{k}"))
            }
        };
        let (a, b) = (join(prefix, key), join(&self.prefix, to));
        match block_on(self.whole.copy(&a, &b)) {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(remote_error(&format!("{src}/{key}"), &e)),
        }
    }

    /// Deletes the object at `key` (none there is no error).
    ///
    /// # Errors
    /// [`StoreError::Remote`].
    pub(crate) fn delete_key(&self, key: &str) -> Result<()> {
        match block_on(self.root.delete(&ObjPath::from(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote_error(&format!("{}/{key}", self.url), &e)),
        }
    }

    /// Deletes every object under the prefix.
    ///
    /// # Errors
    /// [`StoreError::Remote`].
    pub(crate) fn delete_all(&self) -> Result<()> {
        for (key, _, _) in self.list()? {
            block_on(self.root.delete(&ObjPath::from(key.as_str())))
                .map_err(|e| remote_error(&format!("{}/{key}", self.url), &e))?;
        }
        Ok(())
    }
}
