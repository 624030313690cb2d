//! Codecs read beyond zarrs' own, and the names they go by (spec/FORMAT.md §7.1): numcodecs' lz4,
//! crc32 and fletcher32, crc32c in Zarr v2, and zarr-python 3's `numcodecs.*` names for codecs
//! zarrs knows by their Zarr v2 ids, registered with zarrs once, before the first store is
//! opened ([`register`]; zarrs tries runtime registrations before its own); and Zarr v2 blosc
//! chunks followed by trailing bytes (z5py writes its whole output buffer), cut to the frame
//! by the storage under the array ([`BloscFrames`]). zlib and gzip chunks of a known decoded
//! size are inflated by libdeflate ([`Inflate`]).

use std::any::Any;
use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Once};

use crate::Error;

use zarrs::array::codec::api::{
    CodecRuntimePluginV2, CodecRuntimePluginV3, PartialDecoderCapability, PartialEncoderCapability,
    register_codec_v2, register_codec_v3,
};
use zarrs::array::codec::{BloscCodec, Crc32cCodec, GzipCodec, ZlibCodec};
use zarrs::array::{Array, ArrayMetadata};
use zarrs::array::{
    ArrayBytesRaw, BytesRepresentation, BytesToBytesCodecTraits, Codec, CodecError,
    CodecMetadataOptions, CodecOptions, CodecTraits, CodecTraitsV2, CodecTraitsV3,
    RecommendedConcurrency,
};
use zarrs::metadata::Configuration;
use zarrs::metadata::v2::MetadataV2;
use zarrs::metadata::v3::MetadataV3;
use zarrs::plugin::{ExtensionName, PluginCreateError, ZarrVersion};
use zarrs::storage::byte_range::{ByteRangeIterator, InvalidByteRangeError};
use zarrs::storage::{
    Bytes, ListableStorageTraits, MaybeBytes, MaybeBytesIterator, OffsetBytesIterator,
    ReadableStorageTraits, ReadableWritableListableStorage, ReadableWritableListableStorageTraits,
    StorageError, StoreKey, StoreKeys, StoreKeysPrefixes, StorePrefix, WritableStorageTraits,
};

/// The codecs chunkwise reads, by the names stores give them (Zarr v3 names, then Zarr v2
/// ids), for the error that names one it does not.
pub(crate) const READABLE: &[&str] = &[
    "bytes",
    "blosc",
    "zstd",
    "gzip",
    "crc32c",
    "transpose",
    "sharding_indexed",
    "bitround",
    "packbits",
    "numcodecs.zlib",
    "numcodecs.gzip",
    "numcodecs.bz2",
    "numcodecs.lz4",
    "numcodecs.zstd",
    "numcodecs.blosc",
    "numcodecs.shuffle",
    "numcodecs.adler32",
    "numcodecs.fletcher32",
    "numcodecs.crc32",
    "numcodecs.crc32c",
    "numcodecs.fixedscaleoffset",
    "numcodecs.bitround",
    "numcodecs.pcodec",
    #[cfg(feature = "zfp")]
    "numcodecs.zfpy",
    #[cfg(feature = "zfp")]
    "zfp",
    // Zarr v2 ids.
    "zlib",
    "bz2",
    "lz4",
    "shuffle",
    "adler32",
    "fletcher32",
    "crc32",
    "fixedscaleoffset",
    "pcodec",
    #[cfg(feature = "zfp")]
    "zfpy",
];

/// A Zarr v2 array whose compressor is blosc, read through [`BloscFrames`] over `storage`
/// (the storage it was opened on); any other array as it is.
pub(crate) fn frame_blosc_v2(
    array: Array<dyn ReadableWritableListableStorageTraits>,
    storage: ReadableWritableListableStorage,
) -> Array<dyn ReadableWritableListableStorageTraits> {
    match array.metadata() {
        ArrayMetadata::V2(m) if m.compressor.as_ref().is_some_and(|c| c.id() == "blosc") => {
            let framed: ReadableWritableListableStorage = Arc::new(BloscFrames(storage));
            array.with_storage(framed)
        }
        _ => array,
    }
}

/// The error for an array zarrs cannot open: a codec it does not know is named, with the
/// codecs chunkwise reads (spec/FORMAT.md §7.1).
pub(crate) fn open_error(path: &Path, e: zarrs::array::ArrayCreateError) -> Error {
    let msg = e.to_string();
    match unsupported_codec(&msg) {
        Some(codec) => Error::bad_metadata(
            path,
            format!(
                "codec {codec} is not supported (chunkwise reads {}); convert the store with \
                 the tool that wrote it to one of these",
                READABLE.join(", ")
            ),
        ),
        None => Error::metadata(path, e),
    }
}

/// The codec named by zarrs' "codec NAME is not supported".
fn unsupported_codec(msg: &str) -> Option<&str> {
    let rest = &msg[msg.find("codec ")? + 6..];
    let end = rest.find(" is not supported")?;
    let name = &rest[..end];
    (!name.is_empty() && !name.contains(' ')).then_some(name)
}

/// Registers the codecs of this module with zarrs (once per process).
pub(crate) fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // numcodecs' lz4.
        register_codec_v2(CodecRuntimePluginV2::new(
            |name| name == "lz4",
            |_meta: &MetadataV2| Ok(Codec::BytesToBytes(Arc::new(Lz4))),
        ));
        register_codec_v3(CodecRuntimePluginV3::new(
            |name| name == "numcodecs.lz4",
            |_meta: &MetadataV3| Ok(Codec::BytesToBytes(Arc::new(Lz4))),
        ));
        // numcodecs' crc32 (zlib's CRC-32), its checksum at the start unless it says "end".
        register_codec_v2(CodecRuntimePluginV2::new(
            |name| name == "crc32",
            |meta: &MetadataV2| crc32(meta.configuration()),
        ));
        register_codec_v3(CodecRuntimePluginV3::new(
            |name| name == "numcodecs.crc32",
            |meta: &MetadataV3| crc32(&config_map(meta)),
        ));
        // numcodecs' crc32c in Zarr v2 (zarrs registers it for v3 only): its checksum at the
        // end unless it says "start", as zarrs' crc32c codec reads it.
        register_codec_v2(CodecRuntimePluginV2::new(
            |name| name == "crc32c",
            |meta: &MetadataV2| {
                let v3 = MetadataV3::new_with_configuration("crc32c", meta.configuration().clone());
                <Crc32cCodec as CodecTraitsV3>::create(&v3)
            },
        ));
        // zlib and gzip: zarrs' codecs, inflating by libdeflate.
        register_codec_v2(CodecRuntimePluginV2::new(
            |name| name == "zlib",
            |meta: &MetadataV2| Inflate::wrap(<ZlibCodec as CodecTraitsV2>::create(meta)?, false),
        ));
        register_codec_v3(CodecRuntimePluginV3::new(
            |name| name == "numcodecs.zlib",
            |meta: &MetadataV3| Inflate::wrap(<ZlibCodec as CodecTraitsV3>::create(meta)?, false),
        ));
        register_codec_v2(CodecRuntimePluginV2::new(
            |name| name == "gzip",
            |meta: &MetadataV2| Inflate::wrap(<GzipCodec as CodecTraitsV2>::create(meta)?, true),
        ));
        register_codec_v3(CodecRuntimePluginV3::new(
            |name| name == "gzip",
            |meta: &MetadataV3| Inflate::wrap(<GzipCodec as CodecTraitsV3>::create(meta)?, true),
        ));
        // numcodecs' fletcher32 (zarrs' own miscounts an odd last byte).
        register_codec_v2(CodecRuntimePluginV2::new(
            |name| name == "fletcher32",
            |_: &MetadataV2| Ok(fletcher()),
        ));
        register_codec_v3(CodecRuntimePluginV3::new(
            |name| name == "numcodecs.fletcher32",
            |_: &MetadataV3| Ok(fletcher()),
        ));
        // zarr-python 3's numcodecs.* names for codecs zarrs reads by their v2 ids; the
        // configuration is the v2 one (numcodecs' own).
        register_codec_v3(CodecRuntimePluginV3::new(
            |name| {
                matches!(
                    name,
                    "numcodecs.zstd" | "numcodecs.blosc" | "numcodecs.gzip" | "numcodecs.crc32c"
                )
            },
            |meta: &MetadataV3| {
                let id = meta.name().trim_start_matches("numcodecs.");
                if id == "blosc" {
                    return numcodecs_blosc(meta);
                }
                let mut v2 = config_map(meta);
                v2.insert("id".into(), id.into());
                let v2: MetadataV2 = serde_json::from_value(serde_json::Value::Object(v2))
                    .map_err(|e| PluginCreateError::Other(e.to_string()))?;
                Codec::from_metadata(&v2)
            },
        ));
    });
}

fn fletcher() -> Codec {
    Codec::BytesToBytes(Arc::new(Checksum {
        kind: Sum::Fletcher32,
        at_start: false,
    }))
}

/// `numcodecs.blosc` (numcodecs' configuration: shuffle as 0, 1, 2 or -1): zarrs' blosc codec
/// as it builds one for a Zarr v2 array; the element size, which only encoding needs, from
/// `typesize` where the configuration gives it (else encoding does not shuffle).
fn numcodecs_blosc(meta: &MetadataV3) -> Result<Codec, PluginCreateError> {
    use zarrs::array::DataTypeSize;
    use zarrs::metadata_ext::codec::blosc::{
        BloscCodecConfigurationNumcodecs, codec_blosc_v2_numcodecs_to_v3,
    };
    let map = config_map(meta);
    let size = map
        .get("typesize")
        .and_then(|v| v.as_u64())
        .map(|n| DataTypeSize::Fixed(n as usize));
    let cfg: BloscCodecConfigurationNumcodecs =
        serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| PluginCreateError::Other(format!("numcodecs.blosc: {e}")))?;
    let codec = BloscCodec::new_with_configuration(&codec_blosc_v2_numcodecs_to_v3(&cfg, size))?;
    Ok(Codec::BytesToBytes(Arc::new(codec)))
}

/// A v3 codec's configuration (empty if it has none).
fn config_map(meta: &MetadataV3) -> serde_json::Map<String, serde_json::Value> {
    meta.to_configuration().unwrap_or_default()
}

fn no_partial() -> PartialDecoderCapability {
    PartialDecoderCapability {
        partial_read: false,
        partial_decode: false,
    }
}

fn no_partial_encode() -> PartialEncoderCapability {
    PartialEncoderCapability {
        partial_encode: false,
    }
}

/// The length of the blosc frame at the start of `bytes`, if its header says it is shorter
/// than `bytes`.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let cbytes = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?) as usize;
    (cbytes >= 16 && cbytes < bytes.len()).then_some(cbytes)
}

/// zarrs' zlib or gzip codec, but a chunk whose decoded size is known is inflated by
/// libdeflate straight into a buffer of that size: zarrs inflates through flate2's reader into
/// a growing vector (bench/RESULTS.md, "Reading what zarr-python writes"). Anything libdeflate
/// does not decode to exactly that size (a gzip stream of several members, a corrupt chunk) is
/// left to zarrs' codec, whose result or error stands. Names, configuration and encoding are
/// zarrs'.
#[derive(Debug)]
struct Inflate {
    inner: Arc<dyn BytesToBytesCodecTraits>,
    gzip: bool,
}

impl Inflate {
    fn wrap(codec: Codec, gzip: bool) -> Result<Codec, PluginCreateError> {
        match codec {
            Codec::BytesToBytes(inner) => {
                Ok(Codec::BytesToBytes(Arc::new(Inflate { inner, gzip })))
            }
            other => Ok(other),
        }
    }
}

impl ExtensionName for Inflate {
    fn name(&self, version: ZarrVersion) -> Option<Cow<'static, str>> {
        self.inner.name(version)
    }
}

impl CodecTraits for Inflate {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn configuration(&self, v: ZarrVersion, o: &CodecMetadataOptions) -> Option<Configuration> {
        self.inner.configuration(v, o)
    }

    fn partial_decoder_capability(&self) -> PartialDecoderCapability {
        no_partial()
    }

    fn partial_encoder_capability(&self) -> PartialEncoderCapability {
        no_partial_encode()
    }
}

impl BytesToBytesCodecTraits for Inflate {
    fn into_dyn(self: Arc<Self>) -> Arc<dyn BytesToBytesCodecTraits> {
        self
    }

    fn recommended_concurrency(
        &self,
        decoded_representation: &BytesRepresentation,
    ) -> Result<RecommendedConcurrency, CodecError> {
        self.inner.recommended_concurrency(decoded_representation)
    }

    fn encoded_representation(
        &self,
        decoded_representation: &BytesRepresentation,
    ) -> BytesRepresentation {
        self.inner.encoded_representation(decoded_representation)
    }

    fn encode<'a>(
        &self,
        decoded_value: ArrayBytesRaw<'a>,
        options: &CodecOptions,
    ) -> Result<ArrayBytesRaw<'a>, CodecError> {
        self.inner.encode(decoded_value, options)
    }

    fn decode<'a>(
        &self,
        encoded_value: ArrayBytesRaw<'a>,
        decoded_representation: &BytesRepresentation,
        options: &CodecOptions,
    ) -> Result<ArrayBytesRaw<'a>, CodecError> {
        if let BytesRepresentation::FixedSize(n) = decoded_representation
            && let Ok(n) = usize::try_from(*n)
        {
            let mut out = vec![0u8; n];
            let mut d = libdeflater::Decompressor::new();
            let got = if self.gzip {
                d.gzip_decompress(&encoded_value, &mut out)
            } else {
                d.zlib_decompress(&encoded_value, &mut out)
            };
            if got == Ok(n) {
                return Ok(Cow::Owned(out));
            }
        }
        self.inner
            .decode(encoded_value, decoded_representation, options)
    }
}

/// numcodecs' `lz4`: the decoded length as a little-endian 32-bit integer, then one LZ4 block.
#[derive(Debug)]
struct Lz4;

impl ExtensionName for Lz4 {
    fn name(&self, version: ZarrVersion) -> Option<Cow<'static, str>> {
        Some(Cow::Borrowed(match version {
            ZarrVersion::V2 => "lz4",
            _ => "numcodecs.lz4",
        }))
    }
}

impl CodecTraits for Lz4 {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn configuration(&self, _: ZarrVersion, _: &CodecMetadataOptions) -> Option<Configuration> {
        let mut c = serde_json::Map::new();
        c.insert("acceleration".into(), 1.into());
        Some(c.into())
    }

    fn partial_decoder_capability(&self) -> PartialDecoderCapability {
        no_partial()
    }

    fn partial_encoder_capability(&self) -> PartialEncoderCapability {
        no_partial_encode()
    }
}

impl BytesToBytesCodecTraits for Lz4 {
    fn into_dyn(self: Arc<Self>) -> Arc<dyn BytesToBytesCodecTraits> {
        self
    }

    fn recommended_concurrency(
        &self,
        _: &BytesRepresentation,
    ) -> Result<RecommendedConcurrency, CodecError> {
        Ok(RecommendedConcurrency::new_maximum(1))
    }

    fn encoded_representation(
        &self,
        decoded_representation: &BytesRepresentation,
    ) -> BytesRepresentation {
        decoded_representation
            .size()
            .map_or(BytesRepresentation::UnboundedSize, |n| {
                BytesRepresentation::BoundedSize(
                    4 + lz4_flex::block::get_maximum_output_size(n as usize) as u64,
                )
            })
    }

    fn encode<'a>(
        &self,
        decoded_value: ArrayBytesRaw<'a>,
        _: &CodecOptions,
    ) -> Result<ArrayBytesRaw<'a>, CodecError> {
        if u32::try_from(decoded_value.len()).is_err() {
            return Err(CodecError::Other(format!(
                "lz4: a chunk of {} bytes is more than its 32-bit length header holds",
                decoded_value.len()
            )));
        }
        Ok(Cow::Owned(lz4_flex::block::compress_prepend_size(
            &decoded_value,
        )))
    }

    fn decode<'a>(
        &self,
        encoded_value: ArrayBytesRaw<'a>,
        decoded_representation: &BytesRepresentation,
        _: &CodecOptions,
    ) -> Result<ArrayBytesRaw<'a>, CodecError> {
        let Some(head) = encoded_value.get(..4) else {
            return Err(CodecError::Other(format!(
                "lz4: {} bytes hold no length header",
                encoded_value.len()
            )));
        };
        let n = u32::from_le_bytes(head.try_into().expect("4 bytes")) as u64;
        // The header's length is the chunk's (never more than its bounds), so a corrupt one
        // allocates nothing unbounded.
        let bound = decoded_representation.size().unwrap_or(u64::MAX);
        let fits = match decoded_representation {
            BytesRepresentation::FixedSize(want) => n == *want,
            _ => n <= bound,
        };
        if !fits {
            return Err(CodecError::Other(format!(
                "lz4: the header says {n} decoded bytes, the chunk holds {}",
                decoded_representation
                    .size()
                    .map_or_else(|| "any number".to_string(), |s| s.to_string())
            )));
        }
        let mut out = vec![0u8; n as usize];
        let got = lz4_flex::block::decompress_into(&encoded_value[4..], &mut out)
            .map_err(|e| CodecError::Other(format!("lz4: {e}")))?;
        if got as u64 != n {
            return Err(CodecError::Other(format!(
                "lz4: {got} bytes decoded, the header says {n}"
            )));
        }
        Ok(Cow::Owned(out))
    }
}

/// numcodecs' 32-bit checksums: `crc32` (zlib's CRC-32, at the start unless the configuration
/// says "end") and `fletcher32` (HDF5's Fletcher-32, at the end), 4 bytes little-endian.
#[derive(Debug)]
struct Checksum {
    kind: Sum,
    at_start: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sum {
    Crc32,
    Fletcher32,
}

impl Sum {
    fn of(self, data: &[u8]) -> u32 {
        match self {
            Sum::Crc32 => crc32fast::hash(data),
            Sum::Fletcher32 => fletcher32(data),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sum::Crc32 => "crc32",
            Sum::Fletcher32 => "fletcher32",
        }
    }
}

/// HDF5's Fletcher-32 (H5_checksum_fletcher32): the bytes as big-endian 16-bit words, a last
/// odd byte as the high byte of a word. (zarrs 0.23's own drops that byte, so its checksum of
/// an odd-length chunk, such as one compressed before the checksum, is wrong.)
fn fletcher32(data: &[u8]) -> u32 {
    let (mut sum1, mut sum2) = (0u32, 0u32);
    let mut words = data.chunks_exact(2);
    for block in words.by_ref().collect::<Vec<_>>().chunks(360) {
        for w in block {
            sum1 += u32::from(u16::from_be_bytes([w[0], w[1]]));
            sum2 += sum1;
        }
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    if let [last] = words.remainder() {
        sum1 += u32::from(*last) << 8;
        sum2 += sum1;
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    (sum2 << 16) | sum1
}

fn crc32(config: &serde_json::Map<String, serde_json::Value>) -> Result<Codec, PluginCreateError> {
    let at_start = match config.get("location").and_then(|v| v.as_str()) {
        None | Some("start") => true,
        Some("end") => false,
        Some(other) => {
            return Err(PluginCreateError::Other(format!(
                "crc32: location {other:?} is neither \"start\" nor \"end\""
            )));
        }
    };
    Ok(Codec::BytesToBytes(Arc::new(Checksum {
        kind: Sum::Crc32,
        at_start,
    })))
}

impl ExtensionName for Checksum {
    fn name(&self, version: ZarrVersion) -> Option<Cow<'static, str>> {
        Some(Cow::Borrowed(match (version, self.kind) {
            (ZarrVersion::V2, k) => k.name(),
            (_, Sum::Crc32) => "numcodecs.crc32",
            (_, Sum::Fletcher32) => "numcodecs.fletcher32",
        }))
    }
}

impl CodecTraits for Checksum {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn configuration(&self, _: ZarrVersion, _: &CodecMetadataOptions) -> Option<Configuration> {
        let mut c = serde_json::Map::new();
        if self.kind == Sum::Fletcher32 {
            return Some(c.into());
        }
        c.insert(
            "location".into(),
            if self.at_start { "start" } else { "end" }.into(),
        );
        Some(c.into())
    }

    fn partial_decoder_capability(&self) -> PartialDecoderCapability {
        no_partial()
    }

    fn partial_encoder_capability(&self) -> PartialEncoderCapability {
        no_partial_encode()
    }
}

impl BytesToBytesCodecTraits for Checksum {
    fn into_dyn(self: Arc<Self>) -> Arc<dyn BytesToBytesCodecTraits> {
        self
    }

    fn recommended_concurrency(
        &self,
        _: &BytesRepresentation,
    ) -> Result<RecommendedConcurrency, CodecError> {
        Ok(RecommendedConcurrency::new_maximum(1))
    }

    fn encoded_representation(
        &self,
        decoded_representation: &BytesRepresentation,
    ) -> BytesRepresentation {
        match decoded_representation {
            BytesRepresentation::FixedSize(n) => BytesRepresentation::FixedSize(n + 4),
            BytesRepresentation::BoundedSize(n) => BytesRepresentation::BoundedSize(n + 4),
            BytesRepresentation::UnboundedSize => BytesRepresentation::UnboundedSize,
        }
    }

    fn encode<'a>(
        &self,
        decoded_value: ArrayBytesRaw<'a>,
        _: &CodecOptions,
    ) -> Result<ArrayBytesRaw<'a>, CodecError> {
        let sum = self.kind.of(&decoded_value).to_le_bytes();
        let mut out = Vec::with_capacity(decoded_value.len() + 4);
        if self.at_start {
            out.extend_from_slice(&sum);
            out.extend_from_slice(&decoded_value);
        } else {
            out.extend_from_slice(&decoded_value);
            out.extend_from_slice(&sum);
        }
        Ok(Cow::Owned(out))
    }

    fn decode<'a>(
        &self,
        encoded_value: ArrayBytesRaw<'a>,
        _: &BytesRepresentation,
        options: &CodecOptions,
    ) -> Result<ArrayBytesRaw<'a>, CodecError> {
        let n = encoded_value.len();
        if n < 4 {
            return Err(CodecError::Other(format!(
                "{}: {n} bytes hold no checksum",
                self.kind.name()
            )));
        }
        let (sum, data) = if self.at_start {
            (&encoded_value[..4], 4..n)
        } else {
            (&encoded_value[n - 4..], 0..n - 4)
        };
        let stored = u32::from_le_bytes(sum.try_into().expect("4 bytes"));
        if options.validate_checksums() {
            let computed = self.kind.of(&encoded_value[data.clone()]);
            if computed != stored {
                return Err(CodecError::Other(format!(
                    "{}: the chunk's checksum {stored:#010x} is not its data's {computed:#010x}",
                    self.kind.name()
                )));
            }
        }
        Ok(match encoded_value {
            Cow::Borrowed(b) => Cow::Borrowed(&b[data]),
            Cow::Owned(mut v) => {
                v.truncate(data.end);
                v.drain(..data.start);
                Cow::Owned(v)
            }
        })
    }
}

/// A Zarr v2 array's storage whose compressor is blosc: each chunk is one blosc frame, and
/// bytes after the frame (z5py writes its whole output buffer) are cut off as the chunk is
/// read. zarrs builds a v2 array's blosc codec itself, past the codecs registered above, so
/// the frame is cut here, below it. Everything else passes through.
pub(crate) struct BloscFrames<S: ?Sized>(pub(crate) Arc<S>);

fn is_metadata(key: &StoreKey) -> bool {
    let name = key.as_str().rsplit('/').next().unwrap_or("");
    matches!(
        name,
        ".zarray" | ".zattrs" | ".zgroup" | ".zmetadata" | "zarr.json"
    )
}

impl<S: ?Sized + ReadableStorageTraits> ReadableStorageTraits for BloscFrames<S> {
    fn get(&self, key: &StoreKey) -> Result<MaybeBytes, StorageError> {
        let value = self.0.get(key)?;
        Ok(match value {
            Some(b) if !is_metadata(key) => match frame_len(&b) {
                Some(n) => Some(b.slice(..n)),
                None => Some(b),
            },
            other => other,
        })
    }

    /// Ranges of a chunk are ranges of its frame: the chunk is read whole and cut first.
    fn get_partial_many<'a>(
        &'a self,
        key: &StoreKey,
        byte_ranges: ByteRangeIterator<'a>,
    ) -> Result<MaybeBytesIterator<'a>, StorageError> {
        if is_metadata(key) {
            return self.0.get_partial_many(key, byte_ranges);
        }
        let Some(value) = self.get(key)? else {
            return Ok(None);
        };
        let len = value.len() as u64;
        Ok(Some(Box::new(byte_ranges.map(move |r| {
            if r.end(len) > len || r.start(len) > r.end(len) {
                return Err(StorageError::from(InvalidByteRangeError::new(r, len)));
            }
            Ok(value.slice(r.to_range_usize(len)))
        }))))
    }

    fn size_key(&self, key: &StoreKey) -> Result<Option<u64>, StorageError> {
        if is_metadata(key) {
            return self.0.size_key(key);
        }
        Ok(self.get(key)?.map(|b| b.len() as u64))
    }

    fn supports_get_partial(&self) -> bool {
        false
    }
}

impl<S: ?Sized + ListableStorageTraits> ListableStorageTraits for BloscFrames<S> {
    fn list(&self) -> Result<StoreKeys, StorageError> {
        self.0.list()
    }

    fn list_prefix(&self, prefix: &StorePrefix) -> Result<StoreKeys, StorageError> {
        self.0.list_prefix(prefix)
    }

    fn list_dir(&self, prefix: &StorePrefix) -> Result<StoreKeysPrefixes, StorageError> {
        self.0.list_dir(prefix)
    }

    fn size_prefix(&self, prefix: &StorePrefix) -> Result<u64, StorageError> {
        self.0.size_prefix(prefix)
    }
}

impl<S: ?Sized + WritableStorageTraits> WritableStorageTraits for BloscFrames<S> {
    fn set(&self, key: &StoreKey, value: Bytes) -> Result<(), StorageError> {
        self.0.set(key, value)
    }

    fn set_partial_many(
        &self,
        key: &StoreKey,
        offset_values: OffsetBytesIterator,
    ) -> Result<(), StorageError> {
        self.0.set_partial_many(key, offset_values)
    }

    fn erase(&self, key: &StoreKey) -> Result<(), StorageError> {
        self.0.erase(key)
    }

    fn erase_prefix(&self, prefix: &StorePrefix) -> Result<(), StorageError> {
        self.0.erase_prefix(prefix)
    }

    fn supports_set_partial(&self) -> bool {
        self.0.supports_set_partial()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fletcher32_counts_an_odd_last_byte() {
        // HDF5's definition, by hand: words 0x0102, 0x0300 (the odd byte high).
        let (s1, s2) = (0x0102 + 0x0300, 0x0102 + (0x0102 + 0x0300));
        assert_eq!(fletcher32(&[1, 2, 3]), (s2 << 16) | s1);
        assert_ne!(fletcher32(&[1, 2, 3]), fletcher32(&[1, 2]));
        // Long enough for the 360-word blocks to fold: the reference sums modulo 65535.
        let data: Vec<u8> = (0..5001u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut a, mut b) = (0u64, 0u64);
        for w in data.chunks(2) {
            let v = (u64::from(w[0]) << 8) | w.get(1).map_or(0, |&x| u64::from(x));
            a = (a + v) % 65535;
            b = (b + a) % 65535;
        }
        let got = fletcher32(&data);
        assert_eq!(
            (
                u64::from(got & 0xffff) % 65535,
                u64::from(got >> 16) % 65535
            ),
            (a, b)
        );
    }

    /// zlib and gzip through libdeflate give zarrs' own codec's bytes (flate2 encodes them
    /// here, as numcodecs would); what libdeflate does not decode to the chunk's size goes to
    /// zarrs' codec: a stream longer than the chunk decodes whole (the chunk's size check is
    /// the array's), a corrupt one is zarrs' error.
    #[test]
    fn zlib_and_gzip_inflate_as_zarrs_does() {
        use std::io::Write;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let zlib = |d: &[u8]| {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(1));
            e.write_all(d).unwrap();
            e.finish().unwrap()
        };
        let gzip = |d: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
            e.write_all(d).unwrap();
            e.finish().unwrap()
        };
        register();
        let opts = CodecOptions::default();
        for (id, encoded) in [("zlib", zlib(&data)), ("gzip", gzip(&data))] {
            let meta: MetadataV2 =
                serde_json::from_value(serde_json::json!({"id": id, "level": 1})).unwrap();
            let Codec::BytesToBytes(codec) = Codec::from_metadata(&meta).unwrap() else {
                panic!("{id}: not a bytes-to-bytes codec");
            };
            assert!(
                codec.as_any().is::<Inflate>(),
                "{id}: zarrs' codec, not ours"
            );
            assert_eq!(codec.name(ZarrVersion::V2).as_deref(), Some(id));
            let fixed = BytesRepresentation::FixedSize(data.len() as u64);
            let got = codec
                .decode(Cow::Borrowed(&encoded), &fixed, &opts)
                .unwrap();
            assert!(got == data, "{id}: values differ");
            // The encoding is zarrs' (the same stream decodes back).
            let again = codec.encode(Cow::Borrowed(&data), &opts).unwrap();
            assert!(codec.decode(again, &fixed, &opts).unwrap() == data, "{id}");
            // A chunk that says it holds less than the stream: zarrs' decode, whole.
            let small = BytesRepresentation::FixedSize(10);
            let got = codec
                .decode(Cow::Borrowed(&encoded), &small, &opts)
                .unwrap();
            assert_eq!(got.len(), data.len(), "{id}");
            // Corrupt: an error, no panic.
            let mut bad = encoded.clone();
            bad.truncate(bad.len() / 2);
            assert!(
                codec.decode(Cow::Owned(bad), &fixed, &opts).is_err(),
                "{id}"
            );
        }
    }

    #[test]
    fn a_blosc_frame_is_cut_at_its_header_length() {
        let mut b = vec![0u8; 40];
        b[12..16].copy_from_slice(&32u32.to_le_bytes());
        assert_eq!(frame_len(&b), Some(32));
        assert_eq!(frame_len(&b[..32]), None);
        assert_eq!(frame_len(&b[..10]), None);
        b[12..16].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(frame_len(&b), None);
    }

    #[test]
    fn lz4_and_crc32_round_trip_and_refuse_damage() {
        let data: Vec<u8> = (0..1000u32).flat_map(|i| (i % 7).to_le_bytes()).collect();
        let rep = BytesRepresentation::FixedSize(data.len() as u64);
        let opts = CodecOptions::default();
        let enc = Lz4.encode(Cow::Borrowed(&data), &opts).unwrap();
        assert_eq!(&enc[..4], &(data.len() as u32).to_le_bytes());
        assert_eq!(Lz4.decode(enc.clone(), &rep, &opts).unwrap(), &data[..]);
        let mut big = enc.to_vec();
        big[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = Lz4.decode(Cow::Owned(big), &rep, &opts).unwrap_err();
        assert!(e.to_string().contains("4294967295"), "{e}");
        for (kind, at_start) in [
            (Sum::Crc32, true),
            (Sum::Crc32, false),
            (Sum::Fletcher32, false),
        ] {
            let c = Checksum { kind, at_start };
            let enc = c.encode(Cow::Borrowed(&data), &opts).unwrap();
            assert_eq!(c.decode(enc.clone(), &rep, &opts).unwrap(), &data[..]);
            let mut bad = enc.to_vec();
            bad[5] ^= 1;
            let e = c.decode(Cow::Owned(bad), &rep, &opts).unwrap_err();
            assert!(e.to_string().contains("checksum"), "{e}");
        }
    }
}
