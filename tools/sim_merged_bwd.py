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
and checks they agree to round-off, for vector_cutoff on/off and layer 0 (vec = 0) or not.
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


def edge_rev(nl, row_off, e_src, e_dst, geo):  # k_edge_rev
    ne = len(e_src)
    rev = -np.ones(ne, dtype=int)
    for e in range(ne):
        t, s, r0 = e_dst[e], e_src[e], row_off[e_dst[e]]
        if e == r0:
            rev[e] = e
        elif s != t and s < nl:
            if any(e_src[k] == s for k in range(r0 + 1, e)):
                continue
            k1 = row_off[s + 1]
            k = row_off[s] + 1
            while k < k1 and e_src[k] != t:
                k += 1
            if k < k1:
                g, h = geo[e], geo[k]
                if h[0] == -g[0] and h[1] == -g[1] and h[2] == -g[2] and h[3] == g[3]:
                    rev[e] = k
    return rev


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


def run(nl, ng_images, extra_ghosts, dup, vc, layer0, cl):
    global CL
    CL = cl
    n, row_off, e_src, e_dst, geo, tr_off, tr_edge = build(nl, ng_images, extra_ghosts, dup)
    q, k = rng.normal(size=(n, F)), rng.normal(size=(n, F))
    v = rng.normal(size=(3, n, F))
    vec = np.zeros((n, 3, F)) if layer0 else rng.normal(size=(n, 3, F))
    gX, gV = rng.normal(size=(nl, F)), rng.normal(size=(nl, 3, F))
    # old: sender pass over the transpose index
    old = [zero_acc() for _ in range(n)]
    for s in range(n):
        for kk in range(tr_off[s], tr_off[s + 1]):
            e = tr_edge[kk]
            sender_edge(e, s, e_dst[e], geo[e], q, k, v, vec, gX, gV, vc, old[s], cl, CU)
    # merged: rev map, merged pass over owned rows, then the rest
    rev = edge_rev(nl, row_off, e_src, e_dst, geo)
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
    err = 0.0
    for s in range(n):
        for key in old[s]:
            ref = old[s][key]
            err = max(err, np.abs(new[s][key] - ref).max() / (np.abs(ref).max() + 1e-30))
    covered = int((rev >= 0).sum())
    print(f"nl={nl} ghosts={n - nl} edges={len(rev)} covered={covered} dup={dup} vc={vc} "
          f"layer0={layer0} cl={cl}: max rel diff {err:.2e}")
    return err


worst = 0.0
for (nl, gi, eg, dup) in [(12, 0, 0, False), (20, 5, 6, True), (30, 8, 4, True), (1, 1, 2, False)]:
    for vc in (True, False):
        for layer0 in (True, False):
            for cl in (0.0, 0.8):
                worst = max(worst, run(nl, gi, eg, dup, vc, layer0, cl))
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
