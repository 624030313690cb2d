"""Plain-Python/numpy transcriptions of ClearMap2's definitions: the oracles of test_clearmap.py.

Written from reading ClearMap2 (github.com/ChristophKirst/ClearMap2, commit f284709d, July
2024), not copied: each function cites the file and lines it transcribes. They favour being
obviously faithful over speed (explicit loops over voxels, lines and blocks, in ClearMap's
order), so they are for small arrays only. Only numpy is needed; nothing here imports
chunkwise.

Files cited:
  AP  = ClearMap/ParallelProcessing/DataProcessing/ArrayProcessing.py
  APC = ClearMap/ParallelProcessing/DataProcessing/ArrayProcessingCode.pyx
  BP  = ClearMap/ParallelProcessing/BlockProcessing.py
  BLK = ClearMap/ParallelProcessing/Block.py
  T3D = ClearMap/ImageProcessing/Topology/Topology3d.py
"""
import math

import numpy as np


def index_kernel(axis=None, dtype="uint32"):
    """T3D:140-149: the separable 3x3x3 configuration kernel; the 1-D kernel of axis d is
    [(2**(3**d))**k for k in 0..2], the full kernel their outer product, so cell (i, j, k) has
    the weight 2**(i + 3j + 9k)."""
    kernels = [np.array([(2 ** (3 ** d)) ** k for k in range(3)], dtype=dtype) for d in range(3)]
    if axis is not None:
        return kernels[axis]
    k = np.ones((3, 3, 3), dtype=object)
    for i in range(3):
        for j in range(3):
            for m in range(3):
                k[i, j, m] = int(kernels[0][i]) * int(kernels[1][j]) * int(kernels[2][m])
    return k.astype(dtype)


def cube_base_2(center=None):
    """T3D:70-82: 2**n on the cube, n counting x (axis 0) fastest, then y, then z; with a
    `center` the centre cell gets that value and is skipped by the count (PK12's 26-bit kernel
    is cube_base_2(center=False))."""
    cube = np.zeros((3, 3, 3), dtype=np.int64)
    n = 0
    for z in range(3):
        for y in range(3):
            for x in range(3):
                if center is not None and (x, y, z) == (1, 1, 1):
                    cube[x, y, z] = center
                else:
                    cube[x, y, z] = 2 ** n
                    n += 1
    return cube


def ranges(size, blocks):
    """APC:58-59 (and 294-295, 313-314, 334-335, 403-404): nblocks = min(size, blocks); the
    block boundaries np.array(np.linspace(0, size, nblocks + 1), dtype=int)."""
    nblocks = min(size, blocks)
    return [int(v) for v in np.array(np.linspace(0, size, nblocks + 1), dtype=int)]


def flat(x):
    """AP:613-614: initialize_source(..., as_1d=True) is reshape(-1, order='A') (memory order),
    bool viewed as uint8 (AP:610-611)."""
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.view(np.uint8)
    return x.reshape(-1, order="A")


def apply_lut(source, lut):
    """APC:56-64 with AP:99-110: sink[i] = lut[source[i]] over the flattened source; the sink
    has the source's shape and the table's dtype (AP:104)."""
    src = np.asarray(source)
    lut = np.asarray(lut)
    out = np.zeros(src.shape, dtype=lut.dtype)
    s = src.view(np.uint8) if src.dtype == bool else src
    for idx in np.ndindex(src.shape):
        out[idx] = lut[int(s[idx])]
    return out


def apply_lut_to_index(source, kernel, lut):
    """APC:67-107: for every voxel, temp = sum over the kernel window clipped to the array of
    <index_t>(source[x + xk, ...] * kernel[xk + k1, ...]) with k1 = k // 2 the kernel centre
    (APC:72-73, 86-93: cells outside the array are skipped, i.e. zero padding), then
    sink = lut[temp]; the sink dtype is the table's (AP:138); 3-D only (AP:141-142)."""
    src = np.asarray(source)
    if src.dtype == bool:
        src = src.view(np.uint8)
    ker = np.asarray(kernel).astype(np.int64)
    lut = np.asarray(lut)
    nx, ny, nz = src.shape
    kx, ky, kz = ker.shape
    kx1, ky1, kz1 = kx // 2, ky // 2, kz // 2
    kx2, ky2, kz2 = kx - kx1, ky - ky1, kz - kz1
    out = np.zeros(src.shape, dtype=lut.dtype)
    is_float = src.dtype.kind == "f"
    for x in range(nx):
        sx = -kx1 if x >= kx1 else -x
        ex = kx2 if x <= nx - kx2 else nx - x
        for y in range(ny):
            sy = -ky1 if y >= ky1 else -y
            ey = ky2 if y <= ny - ky2 else ny - y
            for z in range(nz):
                sz = -kz1 if z >= kz1 else -z
                ez = kz2 if z <= nz - kz2 else nz - z
                temp = 0
                for xk in range(sx, ex):
                    for yk in range(sy, ey):
                        for zk in range(sz, ez):
                            s = src[x + xk, y + yk, z + zk]
                            w = ker[xk + kx1, yk + ky1, zk + kz1]
                            if is_float:  # C: float * long is computed in the float type
                                temp += int(np.trunc(s * src.dtype.type(w)))
                            else:
                                temp += int(s) * int(w)
                out[x, y, z] = lut[temp]
    return out


def correlate1d(source, kernel, axis=0, dtype=None):
    """APC:146-200 and 209-281: along `axis`, out[j] = sum over m in [-k1, k2) with j + m
    inside the line of double(source[j + m]) * double(kernel[k1 + m]), k1 = len // 2,
    k2 = len - k1, summed in that order from 0.0 (left border APC:164-170, centre 172-178,
    right border 180-186: zero padding), then <sink_t>temp: truncation toward zero for integer
    sinks, rounding for float sinks. The sink dtype is numpy.result_type(source, kernel) when
    no sink is given (AP:183; a bool source counts as uint8, AP:610-611).

    This is ClearMap's per-line definition applied to every line. ClearMap's own driver only
    visits every line for 2-D and 3-D arrays: for 1-D it processes no line at all (APC:233-240
    never sets iteration_axis, n_iterations stays 0: the sink keeps its zeros), and for 4-D or
    more its line iterator steps one line past each axis (APC:189-195 tests coordinates < shape
    before incrementing)."""
    src = np.asarray(source)
    if src.dtype == bool:
        src = src.view(np.uint8)
    ker = np.asarray(kernel)
    if dtype is None:
        dtype = np.result_type(src.dtype, ker.dtype)
    dtype = np.dtype(dtype)
    w = [float(v) for v in ker.astype(float)]  # AP:186
    k = len(w)
    k1 = k // 2
    k2 = k - k1
    n = src.shape[axis]
    s = np.moveaxis(src, axis, -1)
    out = np.zeros(s.shape, dtype=np.float64)
    for idx in np.ndindex(s.shape[:-1]):
        line = [float(v) for v in s[idx]]
        for j in range(n):
            temp = 0.0
            for m in range(max(-k1, -j), min(k2, n - j)):
                temp = temp + line[j + m] * w[k1 + m]
            out[idx + (j,)] = temp
    out = np.moveaxis(out, -1, axis)
    if dtype.kind in "iub":
        return np.trunc(out).astype(dtype)
    return out.astype(dtype)


def block_sums(source, blocks):
    """APC:289-304 with AP:484-486: the number of elements > 0 in each of the min(size,
    blocks) ranges of the flattened (memory-order) source."""
    x = flat(source)
    r = ranges(x.size, blocks)
    return np.array([sum(1 for v in x[a:b] if v > 0) for a, b in zip(r[:-1], r[1:])],
                    dtype=np.int64)


def block_ranges(size, blocks):
    """AP:437-460: np.array(np.linspace(0, size, min(blocks, size) + 1), dtype=int)."""
    return np.array(np.linspace(0, size, min(blocks, size) + 1), dtype=int)


def where(source, blocks):
    """APC:398-481: the positions of the elements > 0. 1-D: flat indices (APC:398-422); 2-D and
    3-D: (N, ndim) coordinates found block by block, the blocks being the ranges of the LAST
    axis (APC:431-432, 460-461), each block scanned in C order (APC:444-448, 473-479), the
    blocks concatenated in order (APC:437, 466: l = cumsum of the block sums). dtype int
    (AP:258). Written for any ndim >= 2 the same way (ClearMap: 2-D fails, AP:250 calls the
    misspelled code.block_sums21d; 4-D+ raises, AP:229-231)."""
    x = np.asarray(source)
    if x.dtype == bool:
        x = x.view(np.uint8)
    if x.ndim == 1:
        return np.array([i for i in range(x.shape[0]) if x[i] > 0], dtype=int)
    r = ranges(x.shape[-1], blocks)
    rows = []
    for lo, hi in zip(r[:-1], r[1:]):
        for idx in np.ndindex(x.shape[:-1]):
            for k in range(lo, hi):
                if x[idx + (k,)] > 0:
                    rows.append(idx + (k,))
    return np.array(rows, dtype=int).reshape(-1, x.ndim)


def neighbours(indices, offset):
    """APC:349-391: for every position p, search the position i of indices[p] + offset backwards
    from p over |min(0, offset)| + 1 positions (stop once indices[i] < target) and forwards
    over max(0, offset) + 1 positions (stop once indices[i] > target), the forward hit winning;
    the result is the (p, i) pairs found, in order of p, as an int (s, 2) array (APC:382-391).
    For strictly increasing indices (what `where` of a flat array gives) this is every pair
    with indices[q] == indices[p] + offset."""
    idx = [int(v) for v in np.asarray(indices)]
    n = len(idx)
    lo, hi = min(0, offset), max(0, offset)
    exists = [-1] * n
    for p in range(n):
        plo = max(-1, p + lo - 1)
        phi = min(n, p + hi + 1)
        target = idx[p] + offset
        for i in range(p, plo, -1):
            if idx[i] == target:
                exists[p] = i
                break
            if idx[i] < target:
                break
        for i in range(p, phi):
            if idx[i] == target:
                exists[p] = i
                break
            if idx[i] > target:
                break
    pairs = [(p, q) for p, q in enumerate(exists) if q >= 0]
    return np.array(pairs, dtype=int).reshape(-1, 2)


# --- BlockProcessing ----------------------------------------------------------------------

def block_sizes(size, processes=None, size_max=None, size_min=None, overlap=None,
                optimization=True, optimization_fix="all", cpu_count=None):
    """BP:367-559: (n_blocks, block_ranges, valid_ranges) along one axis. `cpu_count` stands for
    multiprocessing.cpu_count() (BP:410-411)."""
    if processes is None:
        processes = cpu_count
    if not isinstance(processes, int):
        processes = 1
    if processes <= 0:
        processes = 1
    if size_max is None or size_max > size:
        size_max = size
    if overlap is None:
        overlap = 0
    if overlap >= size:
        overlap = size - 1
    fixed = False
    if size_min == "fixed":
        size_min = size_max
        fixed = True
        optimization = False
    elif size_min is None:
        size_min = min(size_max, overlap + 1)
    if size_min > size:
        size_min = size
    if size_min > size_max:
        raise RuntimeError("size_min > size_max")
    if overlap >= size_max:
        raise ValueError("overlap >= size_max")
    if overlap >= size_min:
        raise ValueError("overlap >= size_min")
    block_size = size_max
    n_blocks = int(math.ceil(float(size - block_size) / (block_size - overlap) + 1))
    if n_blocks <= 0:
        n_blocks = 1
    if not fixed:
        block_size = float(size + (n_blocks - 1) * overlap) / n_blocks
    if n_blocks == 1:
        return 1, [(0, size)], [(0, size)]
    if optimization:
        n_add = n_blocks % processes
        if n_add != 0:
            if optimization_fix in [None, "all", all]:
                optimization_fix = "increase" if n_add < processes / 2.0 else "decrease"
            if optimization_fix == "decrease":  # BP:473-476
                n_blocks = n_blocks - n_add + processes
                block_size = float(size + (n_blocks - 1) * overlap) / n_blocks
            # BP:481: the 'increase' branch tests 'decrease' again (ClearMap's FIXME): no change
    rest = block_size - int(math.floor(block_size))
    block_size = int(math.floor(block_size))
    block_ranges = [(0, block_size)]
    valid_ranges = []
    valid_prev = 0
    sr = rest
    hi = block_size
    n = 1
    while n < n_blocks:
        n += 1
        hi_prev = hi
        lo = hi - overlap
        hi = lo + block_size
        sr += rest
        if sr >= 1:
            sr -= 1
            hi += 1
        if n == n_blocks:
            hi = size
            if fixed:
                lo = hi - block_size
        block_ranges.append((lo, hi))
        valid = int(round((hi_prev - lo) / 2.0 + lo))
        if valid > size:
            valid = size
        valid_ranges.append((valid_prev, valid))
        valid_prev = valid
    valid_ranges.append((valid_prev, size))
    return n_blocks, block_ranges, valid_ranges


def split(shape, axes, processes=None, size_max=None, size_min=None, overlap=None,
          optimization=True, optimization_fix="all", cpu_count=None):
    """BP:605-707 with BLK:223-263: the blocks in ClearMap's order (np.unravel_index over the
    grid, C order) as dicts: index, blocks_shape, range (per axis [lo, hi) in the array) and
    valid (per axis [lo, hi) in the array)."""
    def unpack(v):
        return list(v) if isinstance(v, (list, tuple)) else [v] * len(axes)
    smax, smin, ov = unpack(size_max), unpack(size_min), unpack(overlap)
    opt, fix = unpack(optimization), unpack(optimization_fix)
    per_axis = []
    a = 0
    for d, n in enumerate(shape):
        if d in axes:
            _, br, vr = block_sizes(n, processes, smax[a], smin[a], ov[a], opt[a], fix[a],
                                    cpu_count=cpu_count)
            a += 1
        else:
            br, vr = [(0, n)], [(0, n)]
        per_axis.append(list(zip(br, vr)))
    grid = tuple(len(p) for p in per_axis)
    out = []
    for i in range(int(np.prod(grid))):
        index = tuple(int(v) for v in np.unravel_index(i, grid))
        out.append(dict(index=index, blocks_shape=grid,
                        range=[per_axis[d][index[d]][0] for d in range(len(shape))],
                        valid=[per_axis[d][index[d]][1] for d in range(len(shape))]))
    return out


def process_array(function, sources, n_sinks, blocks):
    """BP:281-321 (function_type 'array'): for every block the function gets the sources' block
    arrays; its result (a tuple/list for several sinks) is cut to the block's valid region,
    which is written to the sinks' valid region. Returns the sinks as new arrays of the first
    source's shape and dtype (the hint, BP:211)."""
    sinks = [np.zeros(sources[0].shape, sources[0].dtype) for _ in range(n_sinks)]
    for b in blocks:
        sl = tuple(slice(lo, hi) for lo, hi in b["range"])
        res = function(*[s[sl] for s in sources])
        if not isinstance(res, (list, tuple)):
            res = [res]
        vrel = tuple(slice(v0 - lo, v1 - lo) for (lo, _), (v0, v1) in zip(b["range"], b["valid"]))
        vabs = tuple(slice(v0, v1) for v0, v1 in b["valid"])
        for sink, r in zip(sinks, res):
            sink[vabs] = np.asarray(r)[vrel]
    return sinks
