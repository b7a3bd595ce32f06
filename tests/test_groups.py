"""Tests for li2_lightning.groups against brute-force references written here in plain Python."""

import itertools
import json
import re
import time
from collections import Counter

import pytest
import torch

from li2_lightning.groups import Group, make_group

# --- independent references -------------------------------------------------------------------


def check_axioms(T):
    """Plain-Python group axioms; returns (identity, inverse list)."""
    M = len(T)
    assert all(len(row) == M for row in T)
    assert all(0 <= x < M for row in T for x in row), "closure"
    for a in range(M):
        Ta = T[a]
        for b in range(M):
            Tab = T[Ta[b]]
            Tb = T[b]
            for c in range(M):
                assert Tab[c] == Ta[Tb[c]], f"associativity at {(a, b, c)}"
    ids = [e for e in range(M) if all(T[e][x] == x and T[x][e] == x for x in range(M))]
    assert len(ids) == 1, "identity"
    e = ids[0]
    inv = []
    for a in range(M):
        bs = [b for b in range(M) if T[a][b] == e and T[b][a] == e]
        assert len(bs) == 1, f"inverse of {a}"
        inv.append(bs[0])
    return e, inv


def orders_of_element(T, e, a):
    x, k = a, 1
    while x != e:
        x, k = T[x][a], k + 1
    return k


def orders_of(T, e):
    return Counter(orders_of_element(T, e, a) for a in range(len(T)))


def cyclic_ref(M):
    return [[(a + b) % M for b in range(M)] for a in range(M)]


def product_ref(*Ms):
    """Z_M1 x ... x Z_Mk by tuples, indexed in mixed radix with the first factor most significant."""
    elems = list(itertools.product(*[range(M) for M in Ms]))
    index = {t: i for i, t in enumerate(elems)}
    return [[index[tuple((x + y) % M for x, y, M in zip(s, t, Ms))] for t in elems] for s in elems]


def perm_ref(n, even_only=False):
    """S_n or A_n: lexicographic permutations, (p·q)(i) = p(q(i))."""
    def parity(p):
        return sum(p[i] > p[j] for i in range(n) for j in range(i + 1, n)) % 2

    perms = [p for p in itertools.permutations(range(n)) if not (even_only and parity(p))]
    index = {p: i for i, p in enumerate(perms)}
    return [[index[tuple(p[q[i]] for i in range(n))] for q in perms] for p in perms]


def dihedral_ref(n):
    """D_n acting on the n-gon's vertices: r^k s^f sends vertex i to k + (-1)^f i."""
    elems = [(k, f) for f in range(2) for k in range(n)]  # index f·n + k

    def act(g):
        k, f = g
        return tuple((k + (-1) ** f * i) % n for i in range(n))

    index = {act(g): i for i, g in enumerate(elems)}
    return [[index[tuple(act(g)[j] for j in act(h))] for h in elems] for g in elems]


def quaternion_ref():
    """Q8 as 2x2 complex matrices, indices 1, -1, i, -i, j, -j, k, -k."""
    one, i_ = ((1, 0), (0, 1)), ((1j, 0), (0, -1j))
    j_ = ((0, 1), (-1, 0))

    def mul(A, B):
        return tuple(tuple(sum(A[r][t] * B[t][c] for t in range(2)) for c in range(2)) for r in range(2))

    def neg(A):
        return tuple(tuple(-x for x in row) for row in A)

    k_ = mul(i_, j_)
    elems = [one, neg(one), i_, neg(i_), j_, neg(j_), k_, neg(k_)]
    return [[elems.index(mul(A, B)) for B in elems] for A in elems]


# --- constructions ----------------------------------------------------------------------------

CASES = {
    # spec: (order, abelian, reference table or None, element-order counts or None)
    "Z12": (12, True, cyclic_ref(12), None),
    "Z97": (97, True, cyclic_ref(97), None),
    "Z4xZ7": (28, True, product_ref(4, 7), orders_of(cyclic_ref(28), 0)),  # Z4xZ7 ≅ Z28
    "Z2xZ2xZ9": (36, True, product_ref(2, 2, 9), None),
    "D7": (14, False, dihedral_ref(7), {1: 1, 2: 7, 7: 6}),
    "S4": (24, False, perm_ref(4), {1: 1, 2: 9, 3: 8, 4: 6}),
    "A4": (12, False, perm_ref(4, even_only=True), {1: 1, 2: 3, 3: 8}),
    "Q8": (8, False, quaternion_ref(), {1: 1, 2: 1, 4: 6}),
    "D3xZ2": (12, False, None, {1: 1, 2: 7, 3: 2, 6: 2}),  # ≅ D6
}


@pytest.mark.parametrize("spec", list(CASES))
def test_builtin_group(spec):
    order, abelian, ref, order_counts = CASES[spec]
    G = make_group(spec)
    T = G.table.tolist()
    e, inv = check_axioms(T)

    assert G.name == spec
    assert repr(G) == f"Group('{spec}', order={order})"
    assert G.table.dtype == torch.long and G.table.shape == (order, order)
    assert G.order == order == len(T)
    assert e == 0 and G.identity == 0
    assert G.inverse.tolist() == inv
    assert G.is_abelian is abelian
    assert G.is_abelian == all(T[a][b] == T[b][a] for a in range(order) for b in range(order))
    if ref is not None:
        assert T == ref
    if order_counts is not None:
        assert orders_of(T, 0) == order_counts
    ref_orders = [orders_of_element(T, 0, a) for a in range(order)]
    assert G.element_orders().tolist() == ref_orders
    assert G.element_order(order - 1) == ref_orders[-1]


def test_cyclic_table_is_addition_mod_M():
    for M in (2, 5, 12):
        idx = torch.arange(M)
        assert torch.equal(make_group(f"Z{M}").table, (idx[:, None] + idx[None, :]) % M)


def test_d3xz2_is_product_of_d3_and_z2():
    D3, P = make_group("D3").table.tolist(), make_group("D3xZ2").table.tolist()
    for (g1, h1), (g2, h2) in itertools.product(itertools.product(range(6), range(2)), repeat=2):
        assert P[2 * g1 + h1][2 * g2 + h2] == 2 * D3[g1][g2] + (h1 + h2) % 2


@pytest.mark.parametrize("spec", [" z4 x Z7 ", "Z4×Z7", "Z4XZ7", "z4xz7"])
def test_spec_spelling(spec):
    G = make_group(spec)
    assert G.name == "Z4xZ7"
    assert G.table.tolist() == product_ref(4, 7)


def test_from_table_accepts_identity_not_at_zero():
    # Z3 relabelled so the identity is element 2
    relabel = [2, 0, 1]  # residue r -> index relabel[r]
    back = {v: r for r, v in enumerate(relabel)}
    T = [[relabel[(back[a] + back[b]) % 3] for b in range(3)] for a in range(3)]
    G = Group.from_table(T, name="Z3'")
    assert G.identity == 2 and G.order == 3 and G.name == "Z3'"
    assert [T[a][G.inverse[a]] for a in range(3)] == [2, 2, 2]


# --- files ------------------------------------------------------------------------------------


def test_from_file_round_trip(tmp_path):
    G = make_group("D3xZ2")
    T = G.table.tolist()
    plain, named, table_csv = tmp_path / "plain.json", tmp_path / "named.json", tmp_path / "t.csv"
    plain.write_text(json.dumps(T))
    named.write_text(json.dumps({"name": "mine", "table": T}))
    table_csv.write_text("\n".join(",".join(map(str, row)) for row in T) + "\n\n")

    for path, name in ((plain, "plain"), (named, "mine"), (table_csv, "t")):
        for loaded in (Group.from_file(path), make_group(str(path)), make_group(path)):
            assert loaded.name == name
            assert torch.equal(loaded.table, G.table)
            assert loaded.identity == 0 and torch.equal(loaded.inverse, G.inverse)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("missing.json", None, "does not exist"),
        ("bad.json", "[[0, 1], [1, 0", "not readable JSON"),
        ("obj.json", '{"name": "x"}', "without a 'table' key"),
        ("num.json", "3", "holds a JSON int"),
        ("ragged.json", "[[0, 1], [1]]", r"row 1 has 1 entries"),
        ("header.csv", "a,b\n0,1\n1,0\n", r"line 1: \['a', 'b'\] is not a row of integers"),
        ("ragged.csv", "0,1\n1\n", r"row 1 has 1 entries"),
        ("empty.csv", "\n\n", "holds no rows"),
        ("t.txt", "0,1\n1,0\n", r"suffix '.txt'; accepted: .json or .csv"),
        ("sub.csv", "0,1,2,3,4\n4,0,1,2,3\n3,4,0,1,2\n2,3,4,0,1\n1,2,3,4,0\n", "associativity"),
    ],
)
def test_from_file_errors_name_the_file(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        Group.from_file(path)
    assert f"group file '{path}'" in str(err.value)
    with pytest.raises(ValueError, match=match):
        make_group(str(path))


# --- spec errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["G12", "Z", "Z4x", "xZ4", "Z4+Z7", "", "Z-3", "cyclic12"])
def test_unknown_spec_lists_accepted_forms(spec):
    with pytest.raises(ValueError) as err:
        make_group(spec)
    msg = str(err.value)
    assert f"group={spec!r}" in msg and "not a known group" in msg
    for form in ("Z<M>", "D<n>", "S<n>", "A<n>", "Q8", "Z4xZ7", ".json", ".csv"):
        assert form in msg


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("Z1", "M must be >= 2"),
        ("Z0", "M must be >= 2"),
        ("Z3xZ1", "M must be >= 2"),
        ("S9", "n must be <= 6"),
        ("A7", "n must be <= 6"),
        ("S1", "n must be >= 2"),
        ("A2", "n must be >= 3"),
        ("D2", "n must be >= 3"),
        ("Q4", "only Q8"),
        ("Z100xZ100", "order 10000; accepted: order <= 5000"),
    ],
)
def test_out_of_range_spec(spec, problem):
    with pytest.raises(ValueError, match=problem) as err:
        make_group(spec)
    assert f"group={spec!r}" in str(err.value)


# --- axiom failures ---------------------------------------------------------------------------


def first_assoc_failure(T):
    M = len(T)
    for a, b, c in itertools.product(range(M), repeat=3):
        if T[T[a][b]][c] != T[a][T[b][c]]:
            return a, b, c


def test_non_square_and_tiny_tables():
    with pytest.raises(ValueError, match=r"shape \(2, 3\); it must be square"):
        Group.from_table(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"row 1 has 1 entries"):
        Group.from_table([[0, 1], [1]])
    with pytest.raises(ValueError, match=r"has 4 rows but row 0 is not a list"):
        Group.from_table([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"shape \(4,\); it must be square"):
        Group.from_table(torch.arange(4))
    with pytest.raises(ValueError, match="M must be >= 2"):
        Group.from_table([[0]])


def test_non_integer_entries():
    with pytest.raises(ValueError, match=r"table\[1, 0\] = 0.5 is not an integer"):
        Group.from_table(torch.tensor([[0.0, 1.0], [0.5, 0.0]]))
    with pytest.raises(ValueError, match="must be an M x M array of integers"):
        Group.from_table([["a", "b"], ["b", "a"]])
    G = Group.from_table(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # integral floats are fine
    assert G.table.dtype == torch.long


@pytest.mark.parametrize("bad", [5, -1])
def test_closure_names_position(bad):
    T = make_group("Z5").table.clone()
    T[3, 2] = bad
    with pytest.raises(ValueError, match=rf"closure fails: table\[3, 2\] = {bad} is not an element"):
        Group.from_table(T)


def named_triple(err):
    m = re.search(r"\(a, b, c\) = \((\d+), (\d+), (\d+)\)", str(err.value))
    return tuple(int(v) for v in m.groups())


def assert_names_a_failing_triple(T, err):
    a, b, c = named_triple(err)
    assert T[T[a][b]][c] != T[a][T[b][c]], f"{(a, b, c)} is named but associates"
    assert f"(a·b)·c = {T[T[a][b]][c]} but a·(b·c) = {T[a][T[b][c]]}" in str(err.value)


def test_associativity_names_a_triple():
    T = [[(a - b) % 5 for b in range(5)] for a in range(5)]  # a Latin square, not a group
    with pytest.raises(ValueError, match="associativity fails") as err:
        Group.from_table(T)
    assert_names_a_failing_triple(T, err)


def test_associativity_in_a_loop_with_identity():
    # the smallest non-associative loop: Latin, identity 0, but 1·1 = 0 so not Z5
    T = [[0, 1, 2, 3, 4], [1, 0, 3, 4, 2], [2, 4, 0, 1, 3], [3, 2, 4, 0, 1], [4, 3, 1, 2, 0]]
    assert first_assoc_failure(T) is not None
    with pytest.raises(ValueError, match="associativity fails") as err:
        Group.from_table(T)
    assert_names_a_failing_triple(T, err)


def test_associativity_chunked(monkeypatch):
    import li2_lightning.groups as groups

    monkeypatch.setattr(groups, "_ASSOC_CHUNK", 1)  # one row of x per chunk
    T = make_group("S4").table.clone()
    Group.from_table(T)
    T[[5, 6]] = T[[6, 5]]  # swap two rows: still Latin, no longer a group
    with pytest.raises(ValueError, match="associativity fails") as err:
        Group.from_table(T)
    assert_names_a_failing_triple(T.tolist(), err)


def random_loop(n, rng):
    """A random Latin square with identity 0 (row and column 0 are 0..n-1), by backtracking."""
    T = [[None] * n for _ in range(n)]
    T[0] = list(range(n))
    for i in range(n):
        T[i][0] = i
    cells = [(i, j) for i in range(1, n) for j in range(1, n)]

    def fill(k):
        if k == len(cells):
            return True
        i, j = cells[k]
        used = set(T[i][:j]) | {T[r][j] for r in range(i)}
        options = [v for v in range(n) if v not in used]
        rng.shuffle(options)
        for v in options:
            T[i][j] = v
            if fill(k + 1):
                return True
        T[i][j] = None
        return False

    assert fill(0)
    return T


def relabel(T, perm):
    """The same operation with element a called perm[a]."""
    n = len(T)
    out = [[None] * n for _ in range(n)]
    for a in range(n):
        for b in range(n):
            out[perm[a]][perm[b]] = perm[T[a][b]]
    return out


def chein_moufang_loop(G):
    """M(G, 2) = G × {0, 1} (Chein): a Moufang loop, non-associative when G is non-abelian."""
    n = len(G)
    e = next(a for a in range(n) if all(G[a][x] == x for x in range(n)))
    inv = [next(b for b in range(n) if G[a][b] == e) for a in range(n)]
    T = [[None] * (2 * n) for _ in range(2 * n)]
    for g in range(n):
        for h in range(n):
            T[g][h] = G[g][h]  # (g, 0)(h, 0) = (gh, 0)
            T[g][n + h] = n + G[h][g]  # (g, 0)(h, 1) = (hg, 1)
            T[n + g][h] = n + G[g][inv[h]]  # (g, 1)(h, 0) = (gh⁻¹, 1)
            T[n + g][n + h] = G[inv[h]][g]  # (g, 1)(h, 1) = (h⁻¹g, 0)
    return T


def test_light_test_agrees_with_brute_force_on_random_loops_and_groups():
    import random

    rng = random.Random(0)
    tables = [random_loop(n, rng) for n in (3, 4, 4, 5, 5, 6, 6, 7, 8, 8) for _ in range(3)]
    for spec in ("Z12", "D6", "Q8", "A4", "Z2xZ2xZ2", "S4"):  # groups with scrambled labels
        T = make_group(spec).table.tolist()
        perm = list(range(len(T)))
        rng.shuffle(perm)
        tables.append(relabel(T, perm))
    moufang = chein_moufang_loop(make_group("S3").table.tolist())  # order 12, the smallest
    tables += [moufang, relabel(moufang, rng.sample(range(12), 12))]
    outcomes = Counter()
    for T in tables:
        brute = first_assoc_failure(T)
        if brute is None:
            check_axioms(T)  # a Latin square with identity that associates is a group
            assert Group.from_table(T).order == len(T)
        else:
            with pytest.raises(ValueError, match="associativity fails") as err:
                Group.from_table(T)
            assert_names_a_failing_triple(T, err)
        outcomes[brute is None] += 1
    assert outcomes[True] >= 8 and outcomes[False] >= 15  # both kinds were tried


def test_light_test_on_random_magmas_agrees_with_brute_force():
    import random

    rng = random.Random(1)
    for _ in range(40):
        n = rng.randint(2, 6)
        T = [[rng.randrange(n) for _ in range(n)] for _ in range(n)]
        if rng.random() < 0.5:  # a left-zero band with some noise: associative-ish, no identity
            T = [[a if rng.random() < 0.9 else rng.randrange(n) for _ in range(n)] for a in range(n)]
        brute = first_assoc_failure(T)
        try:
            Group.from_table(T)
        except ValueError as err:
            if brute is not None:
                assert "associativity fails" in str(err)
                a, b, c = map(int, re.search(r"= \((\d+), (\d+), (\d+)\)", str(err)).groups())
                assert T[T[a][b]][c] != T[a][T[b][c]]
            else:
                assert "associativity" not in str(err)
        else:
            assert brute is None
            check_axioms(T)


def test_large_non_associative_loop_is_caught_past_the_brute_force_size():
    # M(D75, 2): a Moufang loop of order 300 > 256, so the generator test runs to the end
    T = chein_moufang_loop(make_group("D75").table.tolist())
    with pytest.raises(ValueError, match="associativity fails") as err:
        Group.from_table(T)
    assert_names_a_failing_triple(T, err)


def test_large_non_group_table_without_identity_is_rejected_quickly():
    M = 600  # a·b = a: associative, a left-zero band; needs M generators, so it stops early
    T = torch.arange(M)[:, None].expand(M, M)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="identity missing"):
        Group.from_table(T)
    assert time.perf_counter() - t0 < 10


def scrambled_cyclic_csv(path, M, seed):
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(seed))
    idx = torch.arange(M)
    T = torch.empty(M, M, dtype=torch.long)
    T[perm[:, None], perm[None, :]] = perm[(idx[:, None] + idx[None, :]) % M]
    path.write_text("\n".join(",".join(map(str, row)) for row in T.tolist()) + "\n")
    return T


@pytest.mark.parametrize("M", [1000, pytest.param(3000, marks=pytest.mark.slow)])
def test_large_valid_table_file_validates_in_seconds(tmp_path, M):
    T = scrambled_cyclic_csv(tmp_path / "big.csv", M, seed=0)
    t0 = time.perf_counter()
    G = Group.from_file(tmp_path / "big.csv")
    seconds = time.perf_counter() - t0
    assert torch.equal(G.table, T) and G.is_abelian
    assert seconds < (10 if M <= 1000 else 40), f"{M}x{M} table took {seconds:.1f} s"


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_table_file_past_the_order_limit_is_rejected_after_its_first_row(tmp_path, suffix):
    from li2_lightning.groups import MAX_ORDER

    M = MAX_ORDER + 1
    row = ",".join(["0"] * M)
    # only the first row is complete: a reader that parsed the whole file would fail differently
    text = (row + "\n1,2\n") if suffix == "csv" else ('{"name": "big", "table": [[' + row + "], [1, 2")
    path = tmp_path / f"big.{suffix}"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"M={M} entries per row; accepted: order <= {MAX_ORDER}"):
        Group.from_file(path)
    with pytest.raises(ValueError, match=f"order <= {MAX_ORDER}"):
        Group.from_table(torch.zeros(M, M, dtype=torch.long))


def test_identity_missing():
    T = [[a for b in range(4)] for a in range(4)]  # a·b = a: associative, no identity
    with pytest.raises(ValueError, match="identity missing"):
        Group.from_table(T)


def test_element_without_inverse():
    T = [[(a * b) % 4 for b in range(4)] for a in range(4)]  # multiplication mod 4: a monoid
    with pytest.raises(ValueError, match="element 0 has no inverse") as err:
        Group.from_table(T)
    assert "row 0 is not a permutation of 0..3, 0·0 = 0·1 = 0" in str(err.value)


def test_element_order_rejects_non_elements():
    G = make_group("Z6")
    assert [G.element_order(a) for a in range(6)] == [1, 6, 3, 2, 3, 6]
    with pytest.raises(ValueError, match="a=6 is not an element of Z6"):
        G.element_order(6)
