//! The library's errors, one enum per layer as zarrs has them ([`StoreError`], [`InputError`],
//! [`KernelError`], [`GrowError`]), wrapped into [`Error`] with `#[from]`; the errors every
//! layer can meet (I/O, options, regions, outputs, locks, cancellation) are [`Error`]'s own.
//!
//! Invariant: every variant carries the file, chunk or values a user needs to find the
//! problem; messages are lowercase with no trailing period and name values and files, never
//! command-line flags (the binary adds those); a zarrs error is kept as the source.

use std::path::PathBuf;

use crate::dtype::DType;

/// Result with the library's [`Error`].
///
/// ```
/// fn chunks_of(shape: &[u64]) -> chunkwise::Result<u64> {
///     let grid = chunkwise::Grid::new(shape, &chunkwise::default_chunks(shape))?;
///     Ok(grid.num_chunks())
/// }
/// assert_eq!(chunks_of(&[256, 512, 512])?, 2 * 4 * 4);
/// # Ok::<(), chunkwise::Error>(())
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A lower-level error kept as the source of one of ours (a zarrs error, say).
///
/// ```no_run
/// use chunkwise::{Error, Source, StoreError};
/// if let Err(Error::Store(StoreError::BadMetadata { source: Some(zarrs), .. })) =
///     chunkwise::Store::open("odd.zarr")
/// {
///     let zarrs: Source = zarrs; // the zarrs error, kept whole
///     eprintln!("zarrs said: {zarrs}");
/// }
/// ```
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in chunkwise.
///
/// ```
/// use chunkwise::{Error, Grid};
/// match Grid::new(&[100, 100], &[0, 64]) {
///     Err(Error::InvalidOption { option, reason }) => {
///         assert_eq!(option, "chunks");
///         assert_eq!(reason, "chunk size on axis 0 is zero");
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a Zarr array.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// Opening or reading an input (.npy, raw, TIFF, a view).
    #[error(transparent)]
    Input(#[from] InputError),

    /// A kernel that cannot compute a chunk.
    #[error(transparent)]
    Kernel(#[from] KernelError),

    /// Arrays that cannot be joined.
    #[error(transparent)]
    Grow(#[from] GrowError),

    /// An operating-system error on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A path that does not exist (said as the system says ENOENT, with its number).
    #[error("{}: No such file or directory (os error 2)", .0.display())]
    NotFound(PathBuf),

    /// A bad setting: a chunk shape with a zero or the wrong rank, a bad level, a sigma that
    /// is not finite, ...
    #[error("invalid {option}: {reason}")]
    InvalidOption {
        /// The setting, by its library name (`chunks`, `sigma`, `threads`; the binary shows
        /// the flag).
        option: &'static str,
        /// What is wrong, with the value.
        reason: String,
    },

    /// A region that does not parse or lies outside the array.
    #[error("invalid region {spec:?}: {reason}")]
    BadRegion {
        /// The region as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },

    /// An output that exists, written without overwriting allowed.
    #[error("{}: already exists (allow overwriting to replace it)", .0.display())]
    OutputExists(PathBuf),

    /// An output another process is writing.
    #[error("{}: being written by another process ({holder})", path.display())]
    Locked {
        /// The output path.
        path: PathBuf,
        /// Who holds it, as far as known.
        holder: String,
    },

    /// A request too large to address on this machine.
    #[error("{what} of {elements} elements is too large for this machine")]
    TooLarge {
        /// What was being sized.
        what: &'static str,
        /// Its element count.
        elements: u128,
    },

    /// An operation stopped by its [`crate::Cancel`] token, between chunks: it left what a
    /// kill would (a resumable job, the old array, no output file).
    #[error("cancelled")]
    Cancelled,

    /// A broken internal invariant: a bug in chunkwise, never a problem with the input.
    #[error("internal error (please report it): {0}")]
    Internal(String),

    /// A round trip or check that found different data.
    #[error("{what}: {detail}")]
    Mismatch {
        /// What was compared.
        what: String,
        /// The first difference.
        detail: String,
    },
}

/// Errors of the store layer: Zarr arrays on disk.
///
/// ```no_run
/// use chunkwise::{Error, Region, Store, StoreError};
/// let store = Store::open("volume.zarr")?;
/// match store.read_region::<u16>(&Region::new(vec![0..64, 0..64, 0..64])) {
///     Ok(block) => println!("{:?}", block.shape()),
///     Err(Error::Store(StoreError::CorruptChunk { key, .. })) => eprintln!("bad chunk {key}"),
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A directory that is not a Zarr array.
    #[error("{}: not a zarr array (no zarr.json or .zarray)", .0.display())]
    NotAStore(PathBuf),

    /// Array metadata that zarrs refuses (or chunkwise cannot handle).
    #[error("{}: bad array metadata: {reason}", path.display())]
    BadMetadata {
        /// The store.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// The zarrs error, where one said so.
        #[source]
        source: Option<Source>,
    },

    /// A chunk that cannot be read or decoded.
    #[error("{}: chunk {key}: {reason}", store.display())]
    CorruptChunk {
        /// The store.
        store: PathBuf,
        /// The chunk's key, e.g. `c/0/1/2`.
        key: String,
        /// What went wrong decoding it.
        reason: String,
        /// The zarrs error, where one said so.
        #[source]
        source: Option<Source>,
    },

    /// A chunk that cannot be encoded.
    #[error("{}: encoding chunk {key}: {reason}", store.display())]
    Encode {
        /// The store.
        store: PathBuf,
        /// The chunk's key.
        key: String,
        /// What the codec said.
        reason: String,
        /// The zarrs error, where one said so.
        #[source]
        source: Option<Source>,
    },

    /// A store whose metadata changed (appended to, replaced, ...) since it was opened.
    #[error(
        "{}: the array changed since it was opened ({what}); open it again",
        path.display()
    )]
    Changed {
        /// The store.
        path: PathBuf,
        /// What changed, e.g. its shape from [100, 64] to [150, 64].
        what: String,
    },

    /// Object storage (`s3://`) that cannot be reached or refuses a request: the endpoint
    /// down, a bucket that does not exist, credentials missing or wrong.
    #[error("{url}: {reason}")]
    Remote {
        /// The `s3://bucket/prefix` URL.
        url: String,
        /// What the server (or the connection) said, and what to check.
        reason: String,
    },

    /// A store that is read-only for chunkwise (Zarr v2).
    #[error("{}: {reason}", path.display())]
    ReadOnly {
        /// The store.
        path: PathBuf,
        /// Why it cannot be written.
        reason: String,
    },
}

/// Errors of the input layer: files to read and views of them.
///
/// ```no_run
/// use chunkwise::{DType, Error, Input, InputError, Region};
/// let volume = Input::open("volume.zarr")?; // a uint16 array
/// let read = volume.read_region::<f32>(&Region::new(vec![0..1, 0..1, 0..1]));
/// if let Err(Error::Input(InputError::DtypeMismatch { stored, requested, .. })) = read {
///     assert_eq!((stored, requested), (DType::U16, DType::F32));
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A directory (or glob) that holds no input files.
    #[error("{}: no .npy or .tif/.tiff files found", .0.display())]
    NoInputs(PathBuf),

    /// A malformed input file (bad .npy header, unreadable TIFF, bad JSON sidecar or view
    /// spec, ...).
    #[error("{}: {reason}", path.display())]
    BadInput {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A file shorter or longer than its header or shape says.
    #[error(
        "{}: expected {expected} bytes of data ({what}), found {actual}",
        path.display()
    )]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// What the expected size was computed from (shape and dtype).
        what: String,
        /// Bytes expected.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },

    /// A data type chunkwise does not handle.
    #[error("{}: unsupported data type {dtype:?} ({hint})", path.display())]
    UnsupportedDtype {
        /// The file or store.
        path: PathBuf,
        /// The type as the file names it.
        dtype: String,
        /// What is supported instead.
        hint: String,
    },

    /// Inputs of a stack that disagree on shape or dtype.
    #[error(
        "{}: {field} {found} differs from {expected} of the first input {}",
        path.display(),
        first.display()
    )]
    StackMismatch {
        /// The first input that differs.
        path: PathBuf,
        /// The first input of the stack.
        first: PathBuf,
        /// "shape" or "dtype".
        field: &'static str,
        /// The first input's value.
        expected: String,
        /// The differing input's value.
        found: String,
    },

    /// An element type requested that differs from the input's.
    #[error("{}: holds {stored}, requested {requested}", path.display())]
    DtypeMismatch {
        /// The input.
        path: PathBuf,
        /// The input's data type.
        stored: DType,
        /// The type asked for.
        requested: DType,
    },

    /// Inputs that must share a shape and do not.
    #[error(
        "{} and {} differ on axis {axis}: {left} vs {right}",
        left_path.display(),
        right_path.display()
    )]
    ShapeMismatch {
        /// The first input.
        left_path: PathBuf,
        /// The input that differs.
        right_path: PathBuf,
        /// The axis (or, for a rank mismatch, the rank position).
        axis: usize,
        /// The first input's size.
        left: u64,
        /// The other input's size.
        right: u64,
    },
}

/// Errors of kernels.
///
/// ```no_run
/// use chunkwise::{DType, Error, ExecOptions, Input, KernelError, MapSpec};
/// let job = chunkwise::map_blocks(&[Input::open("labels.zarr")?], "out.zarr".as_ref(),
///     &MapSpec::new("refuse v1", DType::U8),
///     |_, out| Err(out.error("label 7 is not in the table")), &ExecOptions::default());
/// if let Err(Error::Kernel(KernelError::Compute { chunk, reason })) = job {
///     eprintln!("chunk {chunk}: {reason}");
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A kernel that cannot compute a chunk from its input (a value outside a table, ...).
    #[error("chunk {chunk}: {reason}")]
    Compute {
        /// The output chunk's key.
        chunk: String,
        /// What is wrong, with the offending value and where it is.
        reason: String,
    },
}

/// Errors of growing arrays (append, concat, stack).
///
/// ```no_run
/// use chunkwise::{Error, GrowError, GrowOptions};
/// let joined = chunkwise::concat(&["a.zarr".into(), "b.zarr".into()], "ab.zarr".as_ref(),
///                                &GrowOptions::default());
/// match joined {
///     Err(Error::Grow(GrowError::Incompatible(what))) => eprintln!("{} differs", what.field),
///     other => println!("{:?}", other?.shape),
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrowError {
    /// Arrays that cannot be joined because a metadata field differs.
    #[error("{0}")]
    Incompatible(Box<Incompatibility>),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            return Error::NotFound(path);
        }
        Error::Io { path, source }
    }

    pub(crate) fn bad_input(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Input(InputError::BadInput {
            path: path.into(),
            reason: reason.into(),
        })
    }

    pub(crate) fn option(option: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidOption {
            option,
            reason: reason.into(),
        }
    }

    /// Array metadata that cannot be used, with the zarrs error that said so.
    pub(crate) fn metadata(
        path: impl Into<PathBuf>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Store(StoreError::BadMetadata {
            path: path.into(),
            reason: source.to_string(),
            source: Some(Box::new(source)),
        })
    }

    /// Array metadata that cannot be used, for a reason of ours.
    pub(crate) fn bad_metadata(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Store(StoreError::BadMetadata {
            path: path.into(),
            reason: reason.into(),
            source: None,
        })
    }

    /// A chunk that cannot be read or decoded, with the zarrs error that said so.
    pub(crate) fn corrupt(
        store: impl Into<PathBuf>,
        key: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Store(StoreError::CorruptChunk {
            store: store.into(),
            key: key.into(),
            reason: source.to_string(),
            source: Some(Box::new(source)),
        })
    }
}

impl From<crate::dtype::ParseError> for Error {
    fn from(e: crate::dtype::ParseError) -> Self {
        Error::InvalidOption {
            option: e.what,
            reason: e.reason,
        }
    }
}

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

/// Converts an element count to `usize`, naming what overflowed.
pub(crate) fn to_usize(n: u64, what: &'static str) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::TooLarge {
        what,
        elements: u128::from(n),
    })
}

/// What differs between two arrays that cannot be joined ([`GrowError::Incompatible`]).
///
/// ```
/// let what = chunkwise::Incompatibility {
///     left_path: "a.zarr".into(), right_path: "b.zarr".into(),
///     field: "data_type".into(), left: "uint16".into(), right: "float32".into(),
/// };
/// assert_eq!(what.to_string(), "a.zarr and b.zarr differ in data_type: uint16 vs float32");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// The first array.
    pub left_path: PathBuf,
    /// The array that differs.
    pub right_path: PathBuf,
    /// The field (`data_type`, `fill_value`, `codecs`, `chunk_grid (axis 1)`, ...).
    pub field: String,
    /// The first array's value.
    pub left: String,
    /// The other array's value.
    pub right: String,
}

impl std::fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} and {} differ in {}: {} vs {}",
            self.left_path.display(),
            self.right_path.display(),
            self.field,
            self.left,
            self.right
        )
    }
}
