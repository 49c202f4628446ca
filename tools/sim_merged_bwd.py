#!/usr/bin/env python3
"""
Host-side simulation of the merged backward pass (kernels/edge_bwd.cu, k_edge_bwd_merged +
k_edge_bwd_send<.., REST>, kernels/graph.cu k_edge_rev / k_tr_rest), float64 numpy.

It builds an edge list the way graph.cu does (self-loop first per owned row, candidates in
order, w = pos[s] - pos[t] rounded to fp32, ghosts, periodic images of owned atoms as ghosts,
a duplicated candidate), then computes the sender-pass outputs g_k, g_v (value, gate 1,
gate 2) and g_vec two ways:
  old:    k_edge_bwd_send per sender over the transpose index (the reference);
  merged: per owned receiver t over its row, the sender work of rev[e] from e's data (filters
          of r(e), direction -d(e), self-loop direction 0), then the rest pass over the
          uncovered edges (rev < 0) adding into owned rows;
and checks they agree to round-off, for vector_cutoff on/off and layer 0 (vec = 0) or not;
also for periodic boxes with the built-in exchange (ghost_owner known: a ghost sender's edge
is paired with the edge of its owner's row, compared after folding ghost rows into owners).
The per-edge formulas are transliterations of the two kernels (same variable names).
The receiver work (g_q, dE/dw) is the unchanged k_edge_bwd_recv code, not simulated.
Run: /opt/tvenv/bin/python tools/sim_merged_bwd.py
"""
import numpy as np

rng = np.random.default_rng(5)
F, H = 16, 4
D = F // H
CL, CU = 0.0, 3.0


def silu(x):
    return x / (1 + np.exp(-x))


def cutoff(r, cl, cu):
    if cl > 0:
        if not (cl < r < cu):
            return 0.0
        x = 2 * (r - cl) / (cu - cl) + 1
    else:
        if not r < cu:
            return 0.0
        x = r / cu
    return 0.5 * (np.cos(np.pi * x) + 1)


def gsum(v):  # group_sum over the lanes of a head: per head sum, broadcast to its channels
    return np.repeat(v.reshape(H, D).sum(1), D)


# filters: 4 parts of F channels, smooth functions of r (SiLU of a random combination)
Wf = rng.normal(size=(4, F, 3))


def filt(r):
    basis = np.array([1.0, np.exp(-r), np.cos(r)])
    return silu(Wf @ basis)  # [4][F]: dk, dv, dv1, dv2


def build(nl, ng_images, extra_ghosts, dup):
    pos = rng.uniform(0, 4.0, size=(nl, 3))
    # ghosts: periodic images of some owned atoms (shifted by 4.0) and unrelated atoms
    gpos = [pos[i] + np.array([4.0, 0, 0]) for i in range(ng_images)]
    gpos += [rng.uniform(-1, 5, size=3) for _ in range(extra_ghosts)]
    allpos = np.vstack([pos] + ([np.array(gpos)] if gpos else []))
    n = len(allpos)
    row_off, e_src, e_dst, geo = [0], [], [], []
    for t in range(nl):
        e_src.append(t); e_dst.append(t); geo.append((0.0, 0.0, 0.0, 0.0))
        cand = [j for j in range(n) if j != t]
        rng.shuffle(cand)
        if dup and t == 0 and len(cand) > 2:
            cand = cand + [cand[1]]  # duplicated candidate
        for j in cand:
            w = allpos[j] - allpos[t]
            d2 = float(w @ w)
            if CL * CL <= d2 < CU * CU:
                e_src.append(j); e_dst.append(t)
                geo.append((np.float32(w[0]), np.float32(w[1]), np.float32(w[2]),
                            np.float32(np.sqrt(d2))))
        row_off.append(len(e_src))
    geo = np.array(geo, dtype=np.float64)
    e_src = np.array(e_src); e_dst = np.array(e_dst)
    order = np.argsort(e_src, kind="stable")
    tr_off = np.searchsorted(e_src[order], np.arange(n + 1))
    return n, np.array(row_off), e_src, e_dst, geo, tr_off, order


def build_periodic(nl, box):
    """A periodic cube of side box (< 2 CU: atoms see images of themselves), ghosts = every
    image within CU of the box, rows ordered as k_graph_fill (self-loop, senders whose owned
    atom is >= t in candidate order, then those < t from the row's end backwards)."""
    pos = rng.uniform(0, box, size=(nl, 3))
    gpos, gown = [], []
    for sx in (-1, 0, 1):
        for sy in (-1, 0, 1):
            for sz in (-1, 0, 1):
                if sx == sy == sz == 0:
                    continue
                sh = np.array([sx, sy, sz], dtype=float) * box
                for i in range(nl):
                    p = pos[i] + sh  # fp64, as the caller's ghost positions
                    lo = np.maximum(0.0, np.minimum(p, box))  # nearest point of the box
                    if np.sum((p - lo) ** 2) < CU * CU:
                        gpos.append(p)
                        gown.append(i)
    allpos = np.vstack([pos] + ([np.array(gpos)] if gpos else []))
    n = len(allpos)
    own = lambda u: u if u < nl else gown[u - nl]
    row_off, e_src, e_dst, geo = [0], [], [], []
    for t in range(nl):
        hi, lo = [], []
        cand = [j for j in range(n) if j != t]
        rng.shuffle(cand)
        for j in cand:
            w = allpos[j] - allpos[t]
            d2 = float(w @ w)
            if CL * CL <= d2 < CU * CU:
                item = (j, (np.float32(w[0]), np.float32(w[1]), np.float32(w[2]),
                            np.float32(np.sqrt(d2))))
                (lo if own(j) < t else hi).append(item)
        for j, g in [(t, (0.0, 0.0, 0.0, 0.0))] + hi + lo[::-1]:
            e_src.append(j); e_dst.append(t); geo.append(g)
        row_off.append(len(e_src))
    geo = np.array(geo, dtype=np.float64)
    e_src = np.array(e_src); e_dst = np.array(e_dst)
    order = np.argsort(e_src, kind="stable")
    tr_off = np.searchsorted(e_src[order], np.arange(n + 1))
    return n, np.array(row_off), e_src, e_dst, geo, tr_off, order, np.array(gown, dtype=int)


def edge_rev(nl, row_off, e_src, e_dst, geo, gown=None):  # k_edge_rev0 + k_edge_rev
    ne = len(e_src)

    def owned(u):
        return u if u < nl else (int(gown[u - nl]) if gown is not None else -1)

    cand = -np.ones(ne, dtype=int)
    for e in range(ne):
        t, s, r0 = e_dst[e], e_src[e], row_off[e_dst[e]]
        so = owned(s) if s != t else -1
        if e == r0:
            cand[e] = e
        elif so >= 0:
            g = geo[e]
            for k in range(row_off[so] + 1, row_off[so + 1]):
                h = geo[k]
                if owned(e_src[k]) == t and h[0] == -g[0] and h[1] == -g[1] and \
                        h[2] == -g[2] and h[3] == g[3]:
                    cand[e] = k
                    break
    return np.array([c if c >= 0 and cand[c] == e else -1 for e, c in enumerate(cand)])


def sender_edge(e, s, t, geo_e, q, k, v, vec, gX, gV, vc, acc, cl, cu):
    """k_edge_bwd_send's work of edge e = (s -> t) into acc (sender s's sums)."""
    r = geo_e[3]
    dk, dv, dv1, dv2 = filt(r)
    cc = cutoff(r, cl, cu)
    part = q[t] * k[s] * dk
    a = silu(gsum(part))
    sg = 1 / (1 + np.exp(-gsum(part)))
    da = sg * (1 + gsum(part) * (1 - sg))
    A = a if vc else a * cc
    sv = cc if vc else 1.0
    gA = gsum(gX[t] * v[0][s] * dv * sv)
    gapre = (gA if vc else gA * cc) * da
    acc["gk"] += gapre * q[t] * dk
    acc["gv0"] += gX[t] * A * sv * dv
    inv = 0.0 if s == t else 1.0 / r
    dirv = geo_e[:3] * inv
    g1 = v[1][s] * dv1 * sv
    gvt1 = (gV[t] * vec[s]).sum(0)
    gvt2 = (gV[t] * dirv[:, None]).sum(0)
    acc["gv1"] += gvt1 * sv * dv1
    acc["gv2"] += gvt2 * sv * dv2
    acc["gvec"] += gV[t] * g1[None, :]


def merged_reverse(e, s, t, geo_e, q, k, v, vec, gX, gV, vc, acc, cl, cu):
    """k_edge_bwd_merged's sender work of e' = (t -> s) from edge e = (s -> t)'s data."""
    r = geo_e[3]
    dk, dv, dv1, dv2 = filt(r)  # pre[i][0/1] after the receiver work
    cc = cutoff(r, cl, cu)
    sv = cc if vc else 1.0
    kt, vt = k[t], v[0][t]
    q2, gX2 = q[s], gX[s]
    part = q2 * kt * dk
    a = silu(gsum(part))
    sg = 1 / (1 + np.exp(-gsum(part)))
    da = sg * (1 + gsum(part) * (1 - sg))
    A = a if vc else a * cc
    gA = gsum(gX2 * vt * dv * sv)
    gapre = (gA if vc else gA * cc) * da
    acc["gk"] += gapre * q2 * dk
    acc["gv0"] += gX2 * A * sv * dv
    dir2 = np.zeros(3)
    if s != t:
        dir2 = -(geo_e[:3] * (1.0 / geo_e[3]))
    gV2 = gV[s]
    gvt1 = (gV2 * vec[t]).sum(0)
    gvt2 = (gV2 * dir2[:, None]).sum(0)
    acc["gv1"] += gvt1 * sv * dv1
    acc["gv2"] += gvt2 * sv * dv2
    vt1 = v[1][t]
    acc["gvec"] += gV2 * (vt1 * dv1 * sv)[None, :]


def zero_acc():
    return {"gk": np.zeros(F), "gv0": np.zeros(F), "gv1": np.zeros(F), "gv2": np.zeros(F),
            "gvec": np.zeros((3, F))}


def run(nl, ng_images, extra_ghosts, dup, vc, layer0, cl, box=None):
    """box: a periodic cube (build_periodic) with the built-in exchange: ghost rows hold their
    owner's features and, in the merged pass, dE/dX and dE/dV (et_cuda.cu gathers them); the
    sums are compared after folding ghost rows into their owners."""
    global CL
    CL = cl
    gown = None
    if box is None:
        n, row_off, e_src, e_dst, geo, tr_off, tr_edge = build(nl, ng_images, extra_ghosts, dup)
    else:
        n, row_off, e_src, e_dst, geo, tr_off, tr_edge, gown = build_periodic(nl, box)
    q, k = rng.normal(size=(n, F)), rng.normal(size=(n, F))
    v = rng.normal(size=(3, n, F))
    vec = np.zeros((n, 3, F)) if layer0 else rng.normal(size=(n, 3, F))
    gX, gV = rng.normal(size=(n, F)), rng.normal(size=(n, 3, F))
    if gown is not None:  # built-in exchange: ghost rows are copies of their owners'
        for g, o in enumerate(gown):
            q[nl + g], k[nl + g], v[:, nl + g], vec[nl + g] = q[o], k[o], v[:, o], vec[o]
            gX[nl + g], gV[nl + g] = gX[o], gV[o]
    # old: sender pass over the transpose index
    old = [zero_acc() for _ in range(n)]
    for s in range(n):
        for kk in range(tr_off[s], tr_off[s + 1]):
            e = tr_edge[kk]
            sender_edge(e, s, e_dst[e], geo[e], q, k, v, vec, gX, gV, vc, old[s], cl, CU)
    # merged: rev map, merged pass over owned rows, then the rest
    rev = edge_rev(nl, row_off, e_src, e_dst, geo, gown)
    assert all(rev[rev[e]] == e for e in range(len(rev)) if rev[e] >= 0), "not an involution"
    new = [zero_acc() for _ in range(n)]
    for t in range(nl):
        for e in range(row_off[t], row_off[t + 1]):
            if rev[e] >= 0:
                merged_reverse(e, e_src[e], t, geo[e], q, k, v, vec, gX, gV, vc, new[t], cl, CU)
    for s in range(n):  # k_tr_rest + k_edge_bwd_send<.., REST>
        for kk in range(tr_off[s], tr_off[s + 1]):
            e = tr_edge[kk]
            if rev[e] < 0:
                sender_edge(e, s, e_dst[e], geo[e], q, k, v, vec, gX, gV, vc, new[s], cl, CU)
    if gown is not None:  # et_ghost_fold (reverse exchange) of both
        for acc in (old, new):
            for g, o in enumerate(gown):
                for key in acc[o]:
                    acc[o][key] = acc[o][key] + acc[nl + g][key]
                acc[nl + g] = zero_acc()
    err = 0.0
    for s in range(n):
        # relative to the row's largest sum (a sum that cancels, e.g. gate 2 of an atom seeing
        # its own images from opposite sides, is ~1e-18 in both)
        scale = max(np.abs(old[s][key]).max() for key in old[s]) + 1e-30
        for key in old[s]:
            err = max(err, np.abs(new[s][key] - old[s][key]).max() / scale)
    covered = int((rev >= 0).sum())
    ghost_pairs = sum(1 for e in range(len(rev)) if rev[e] >= 0 and e_src[e] >= nl)
    # the pair's filter backward (bwd_recv_row) is done at the edge of smaller index: for the
    # pairs of two rows that is the row of the smaller receiver, whose graph order puts the
    # other ones (owned atom of the sender < t) last
    own = (lambda u: u if u < nl else gown[u - nl]) if gown is not None else (lambda u: u)
    assert all((rev[e] > e) == (own(e_src[e]) > e_dst[e]) for e in range(len(rev))
               if rev[e] >= 0 and own(e_src[e]) != e_dst[e])
    print(f"nl={nl} ghosts={n - nl} edges={len(rev)} covered={covered} (ghost senders "
          f"{ghost_pairs}) dup={dup} vc={vc} layer0={layer0} cl={cl} box={box}: "
          f"max rel diff {err:.2e}")
    if box is not None:
        assert covered == len(rev), "a periodic pair was left to the rest pass"
    return err


worst = 0.0
for (nl, gi, eg, dup) in [(12, 0, 0, False), (20, 5, 6, True), (30, 8, 4, True), (1, 1, 2, False)]:
    for vc in (True, False):
        for layer0 in (True, False):
            for cl in (0.0, 0.8):
                worst = max(worst, run(nl, gi, eg, dup, vc, layer0, cl))
# periodic boxes, built-in exchange: images paired with their owners' rows (sides 2.5 and 2.8 <
# CU: an atom sees its own images; 5 and 7.3 < 2 CU: several images of one atom)
for (nl, box) in [(10, 5.0), (24, 7.3), (1, 2.5), (3, 2.8)]:
    for vc in (True, False):
        worst = max(worst, run(nl, 0, 0, False, vc, False, 0.0, box))
    worst = max(worst, run(nl, 0, 0, False, True, True, 0.8, box))
print("worst", worst)
assert worst < 1e-12, "merged and old sender sums differ"
# a broken variant must fail: direction +d instead of -d for the reverse edge
_orig = merged_reverse


def broken(e, s, t, geo_e, *a):
    g = geo_e.copy()
    g[:3] = -g[:3]
    return _orig(e, s, t, g, *a)


merged_reverse = broken
try:
    bad = run(20, 5, 6, True, True, False, 0.0)
except AssertionError:
    bad = 1.0
assert bad > 1e-6, "the check cannot see a sign error"
print("sign-error variant detected:", f"{bad:.2e}")
