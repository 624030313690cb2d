//! Writing into arrays (issue 9 §2): `Store::create` and `Store::write_region`, against the
//! same writes on an in-memory array (numpy's `a[region] = data`), on regular, rectilinear and
//! sharded grids; whole chunks encoded, partial ones read-modified-written, fill-value chunks
//! removed; concurrent writers refused by the lock; readers never see a torn chunk.

use std::process::Command;

use chunkwise::support::write_npy;
use chunkwise::{
    Cancel, DType, Error, GridLayout, GrowOptions, Region, RunOptions, Store, StoreSpec,
};
use ndarray::{ArrayD, IxDyn, Slice};

use crate::common::{fixture, input, store_bytes, tmp};

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A random region of `shape` (sometimes a single voxel, sometimes whole axes, sometimes empty).
fn region(rng: &mut Rng, shape: &[u64]) -> Region {
    Region::new(
        shape
            .iter()
            .map(|&n| match rng.below(8) {
                0 => 0..n,
                1 => {
                    let i = rng.below(n);
                    i..i + 1
                }
                2 if rng.below(4) == 0 => {
                    let i = rng.below(n + 1);
                    i..i
                }
                _ => {
                    let (a, b) = (rng.below(n + 1), rng.below(n + 1));
                    a.min(b)..a.max(b)
                }
            })
            .collect(),
    )
}

fn slice_of(r: &Region) -> Vec<ndarray::SliceInfoElem> {
    r.ranges()
        .iter()
        .map(|x| Slice::from(x.start as usize..x.end as usize).into())
        .collect()
}

/// Random writes in random order, each also made on an in-memory array (the oracle): after
/// every few writes the store reads back exactly the oracle. Some data comes in as strided
/// (transposed, reversed) views; some writes are all fill value (chunks disappear).
fn random_writes<T>(store: &Store, mut make: impl FnMut(&mut Rng) -> T, fill: T, seed: u64)
where
    T: chunkwise::Scalar + chunkwise::Element,
{
    let shape: Vec<usize> = store.shape().iter().map(|&n| n as usize).collect();
    let mut oracle = ArrayD::<T>::from_elem(IxDyn(&shape), fill);
    let mut rng = Rng(seed);
    for step in 0..40 {
        let r = region(&mut rng, store.shape());
        let rshape: Vec<usize> = r.shape().iter().map(|&n| n as usize).collect();
        let all_fill = rng.below(6) == 0;
        let data =
            ArrayD::from_shape_fn(
                IxDyn(&rshape),
                |_| {
                    if all_fill { fill } else { make(&mut rng) }
                },
            );
        // A reversed view of a reversed copy: the same values through negative strides.
        let mut flipped = data.clone();
        for a in 0..flipped.ndim() {
            flipped.invert_axis(ndarray::Axis(a));
        }
        let mut view = flipped.view();
        if step % 3 == 1 {
            for a in 0..view.ndim() {
                view.invert_axis(ndarray::Axis(a));
            }
        } else {
            view = data.view();
        }
        let report = store
            .write_region_with(&r, view, &RunOptions::default().threads(Some(2)))
            .unwrap_or_else(|e| panic!("step {step} region {r}: {e}"));
        oracle.slice_mut(slice_of(&r).as_slice()).assign(&data);
        assert!(report.chunks_written + report.chunks_removed <= report.chunks_touched);
        if step % 5 == 4 || step == 39 {
            let got = store.read_all::<T>().unwrap();
            assert!(
                got == oracle,
                "step {step}: the store differs from the oracle"
            );
        }
    }
}

#[test]
fn random_region_writes_equal_the_same_writes_in_memory() {
    let dir = tmp();
    let d = dir.path();
    let spec = StoreSpec::new(vec![23, 31, 19], DType::U16, vec![7, 9, 5]);
    let s = Store::create(d.join("u16.zarr"), &spec).unwrap();
    assert!(
        store_bytes(&s).iter().all(|&b| b == 0),
        "a new store is all fill value"
    );
    random_writes(&s, |r| (r.below(1000) + 1) as u16, 0, 1);
    // float32, sharded.
    let spec = StoreSpec::new(vec![16, 20, 12], DType::F32, vec![8, 10, 12])
        .subchunks(Some(vec![4, 5, 6]));
    let s = Store::create(d.join("f32.zarr"), &spec).unwrap();
    random_writes(&s, |r| r.below(100) as f32 * 0.25 - 3.0, 0.0, 2);
    // bool, written as 0/1 bytes.
    let spec = StoreSpec::new(vec![9, 40], DType::Bool, vec![4, 16]);
    let s = Store::create(d.join("bool.zarr"), &spec).unwrap();
    random_writes(&s, |r| (r.below(2)) as u8, 0, 3);
    // A rectilinear grid (edges 8, 8, 4, 8, 8, 5 along axis 0).
    let a = d.join("a.npy");
    let b = d.join("b.npy");
    write_npy(&a, DType::U16, &[20, 6, 6], &[0u8; 20 * 36 * 2]).unwrap();
    write_npy(&b, DType::U16, &[21, 6, 6], &[0u8; 21 * 36 * 2]).unwrap();
    let (az, bz, ab) = (d.join("a.zarr"), d.join("b.zarr"), d.join("ab.zarr"));
    for (npy, z) in [(&a, &az), (&b, &bz)] {
        chunkwise::convert(
            &input(npy),
            z,
            &chunkwise::ConvertOptions::default().chunks(Some(vec![8, 3, 6])),
        )
        .unwrap();
    }
    chunkwise::concat(
        &[az, bz],
        &ab,
        &GrowOptions::default().layout(GridLayout::Rectilinear),
    )
    .unwrap();
    let s = Store::open(&ab).unwrap();
    assert!(
        s.chunk_shape().is_none(),
        "the test needs a rectilinear grid"
    );
    random_writes(&s, |r| (r.below(60000) + 1) as u16, 0, 4);
}

/// Whole chunks are encoded without reading; a part of a chunk is read first; writing the
/// fill value over a whole chunk removes its file.
#[test]
fn whole_chunks_are_not_read_and_fill_chunks_are_removed() {
    let dir = tmp();
    let spec = StoreSpec::new(vec![16, 16], DType::U16, vec![8, 8]);
    let s = Store::create(dir.path().join("s.zarr"), &spec).unwrap();
    let ones = ArrayD::<u16>::from_elem(IxDyn(&[8, 16]), 1);
    let r = s
        .write_region_with(
            &Region::new(vec![0..8, 0..16]),
            ones.view(),
            &RunOptions::default(),
        )
        .unwrap();
    assert_eq!(
        (r.chunks_touched, r.chunks_written, r.chunks_read),
        (2, 2, 0)
    );
    let one = ArrayD::<u16>::from_elem(IxDyn(&[1, 1]), 5);
    let r = s
        .write_region_with(
            &Region::new(vec![3..4, 9..10]),
            one.view(),
            &RunOptions::default(),
        )
        .unwrap();
    assert_eq!(
        (r.chunks_touched, r.chunks_written, r.chunks_read),
        (1, 1, 1)
    );
    assert_eq!(s.read_all::<u16>().unwrap()[[3, 9]], 5);
    assert_eq!(s.read_all::<u16>().unwrap()[[3, 8]], 1);
    let zeros = ArrayD::<u16>::zeros(IxDyn(&[8, 8]));
    let r = s
        .write_region_with(
            &Region::new(vec![0..8, 8..16]),
            zeros.view(),
            &RunOptions::default(),
        )
        .unwrap();
    assert_eq!(r.chunks_removed, 1);
    let info = chunkwise::info(&input(dir.path().join("s.zarr"))).unwrap();
    assert_eq!(info.chunks_present, 1);
}

/// Bad writes are clear errors and change nothing: another type, another shape, a region
/// outside the array, a Zarr v2 array; a writer holding the lock refuses the write.
#[test]
fn bad_writes_are_refused_and_change_nothing() {
    let dir = tmp();
    let path = dir.path().join("s.zarr");
    let s = Store::create(&path, &StoreSpec::new(vec![8, 8], DType::U16, vec![4, 4])).unwrap();
    let good = ArrayD::<u16>::from_elem(IxDyn(&[2, 2]), 3);
    s.write_region(&Region::new(vec![0..2, 0..2]), good.view())
        .unwrap();
    let before = store_bytes(&s);
    let f = ArrayD::<f32>::zeros(IxDyn(&[2, 2]));
    let e = s
        .write_region(&Region::new(vec![0..2, 0..2]), f.view())
        .unwrap_err();
    assert!(
        matches!(e, Error::Input(chunkwise::InputError::DtypeMismatch { .. })),
        "{e}"
    );
    let e = s
        .write_region(&Region::new(vec![0..3, 0..2]), good.view())
        .unwrap_err();
    assert!(e.to_string().contains("the data has shape [2, 2]"), "{e}");
    let e = s
        .write_region(&Region::new(vec![7..9, 0..2]), good.view())
        .unwrap_err();
    assert!(e.to_string().contains("outside the array"), "{e}");
    let v2 = Store::open(fixture("stores/zarr_python_v2_blosc.zarr")).unwrap();
    let e = v2
        .write_region(
            &Region::new(vec![0..1, 0..1, 0..1]),
            ArrayD::<u16>::zeros(IxDyn(&[1, 1, 1])).view(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    let mut holder = Command::new("flock")
        .arg(path.join(".chunkwise.lock"))
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1) from util-linux");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let e = s
        .write_region(&Region::new(vec![0..2, 0..2]), good.view())
        .unwrap_err();
    holder.kill().ok();
    holder.wait().unwrap();
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    assert_eq!(store_bytes(&s), before);
}

/// Readers never see a torn chunk: while one thread rewrites whole chunks with 1s and 2s,
/// readers only ever find chunks holding one value throughout, and every read decodes.
#[test]
fn readers_never_see_a_torn_chunk() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tmp();
    let path = dir.path().join("s.zarr");
    let s = Store::create(
        &path,
        &StoreSpec::new(vec![32, 64, 64], DType::U16, vec![16, 32, 32]),
    )
    .unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut reads = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let r = Store::open(&path).unwrap();
                        let all = r.read_all::<u16>().expect("every read decodes");
                        for z in [0usize, 16] {
                            for y in [0usize, 32] {
                                for x in [0usize, 32] {
                                    let c = all.slice(ndarray::s![z..z + 16, y..y + 32, x..x + 32]);
                                    let first = c[[0, 0, 0]];
                                    assert!(c.iter().all(|&v| v == first), "a torn chunk");
                                }
                            }
                        }
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for k in 0..40u16 {
            let v = ArrayD::<u16>::from_elem(IxDyn(&[32, 64, 64]), 1 + k % 2);
            s.write_region_with(
                &Region::full(s.shape()),
                v.view(),
                &RunOptions::default().durability(chunkwise::Durability::NoSync),
            )
            .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0, "a reader never got to read");
        }
    });
}

/// A cancelled write stops between chunks: every chunk is the old one or the new one.
#[test]
fn a_cancelled_write_leaves_whole_chunks() {
    let dir = tmp();
    let path = dir.path().join("s.zarr");
    let s = Store::create(&path, &StoreSpec::new(vec![64, 64], DType::U16, vec![8, 8])).unwrap();
    let token = Cancel::new();
    let t2 = token.clone();
    let cb: chunkwise::ProgressFn = std::sync::Arc::new(move |p: chunkwise::Progress<'_>| {
        if p.done > 0 {
            t2.cancel();
        }
    });
    let v = ArrayD::<u16>::from_elem(IxDyn(&[64, 64]), 9);
    // Progress is throttled: cancel from the callback once some chunks are done, and accept
    // a write that finished first (then every chunk is new).
    let r = s.write_region_with(
        &Region::full(s.shape()),
        v.view(),
        &RunOptions::default()
            .threads(Some(1))
            .progress(Some(cb))
            .cancel(token),
    );
    match r {
        Err(Error::Cancelled) | Ok(_) => {}
        Err(e) => panic!("{e}"),
    }
    let all = s.read_all::<u16>().unwrap();
    for cy in 0..8 {
        for cx in 0..8 {
            let c = all.slice(ndarray::s![cy * 8..cy * 8 + 8, cx * 8..cx * 8 + 8]);
            let first = c[[0, 0]];
            assert!(first == 0 || first == 9);
            assert!(c.iter().all(|&x| x == first), "chunk {cy},{cx} is torn");
        }
    }
    assert!(!path.join(".chunkwise-staging").exists());
}

/// A handle opened before another writer appended to the array refuses to write (its chunk
/// grid is no longer the array's) and changes nothing; a fresh handle writes. A write also
/// discards an interrupted append's record of finished layers, which may no longer hold.
#[test]
fn a_write_through_a_stale_handle_is_refused() {
    let dir = tmp();
    let path = dir.path().join("s.zarr");
    let spec = StoreSpec::new(vec![6, 4], DType::U16, vec![4, 4]);
    let old = Store::create(&path, &spec).unwrap();
    let npy = dir.path().join("more.npy");
    let nines: Vec<u8> = [9u16; 12].iter().flat_map(|v| v.to_ne_bytes()).collect();
    write_npy(&npy, DType::U16, &[3, 4], &nines).unwrap();
    chunkwise::append(&path, &[input(&npy)], &GrowOptions::default()).unwrap();
    let before = store_bytes(&Store::open(&path).unwrap());
    let block = ArrayD::<u16>::from_elem(IxDyn(&[2, 4]), 5);
    let e = old
        .write_region(&Region::new(vec![4..6, 0..4]), block.view())
        .unwrap_err();
    assert!(
        matches!(e, Error::Store(chunkwise::StoreError::Changed { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("its shape from 6x4 to 9x4"), "{e}");
    let now = Store::open(&path).unwrap();
    assert_eq!(store_bytes(&now), before);

    std::fs::write(path.join(".chunkwise-progress.json"), b"{}").unwrap();
    now.write_region(&Region::new(vec![4..6, 0..4]), block.view())
        .unwrap();
    assert!(!path.join(".chunkwise-progress.json").exists());
    let mut want = ArrayD::<u16>::zeros(IxDyn(&[9, 4]));
    want.slice_each_axis_mut(|a| Slice::from(if a.axis.index() == 0 { 6..9 } else { 0..4 }))
        .fill(9);
    want.slice_each_axis_mut(|a| Slice::from(if a.axis.index() == 0 { 4..6 } else { 0..4 }))
        .fill(5);
    assert_eq!(now.read_all::<u16>().unwrap(), want);
}

/// A bool array takes `u8` data holding 0 or 1; any other byte is refused, naming it and
/// where it is, before anything is written.
#[test]
fn bool_arrays_take_only_zero_and_one() {
    let dir = tmp();
    let path = dir.path().join("b.zarr");
    let s = Store::create(&path, &StoreSpec::new(vec![5, 5], DType::Bool, vec![2, 2])).unwrap();
    let mut data = ArrayD::<u8>::zeros(IxDyn(&[3, 3]));
    data[[0, 1]] = 1;
    data[[2, 2]] = 1;
    s.write_region(&Region::new(vec![1..4, 1..4]), data.view())
        .unwrap();
    let mut want = ArrayD::<u8>::zeros(IxDyn(&[5, 5]));
    want[[1, 2]] = 1;
    want[[3, 3]] = 1;
    assert_eq!(s.read_all::<u8>().unwrap(), want);
    let before = store_bytes(&s);
    data[[1, 0]] = 7;
    let e = s
        .write_region(&Region::new(vec![1..4, 1..4]), data.view())
        .unwrap_err();
    assert!(e.to_string().contains("value 7 at [1, 0]"), "{e}");
    assert_eq!(store_bytes(&s), before);
}

/// A spec whose grid would have more chunks than any reader of it accepts (FORMAT §10) is
/// refused before anything is written, naming the grid and the way out.
#[test]
fn a_grid_past_the_chunk_limit_is_refused_up_front() {
    let dir = tmp();
    let path = dir.path().join("many.zarr");
    let e = Store::create(
        &path,
        &StoreSpec::new(vec![1 << 20, 1 << 20], DType::U8, vec![16, 16]),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("65536x65536 chunks") && e.to_string().contains("larger chunks"),
        "{e}"
    );
    assert!(!path.exists());
    const { assert!(chunkwise::MAX_CHUNKS < 65536 * 65536) };
}
