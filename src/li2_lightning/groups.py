"""Finite groups H given by their Cayley tables.

A :class:`Group` of order M labels its elements 0..M-1 and stores ``table[a, b]`` = index of a·b.
Every Li2 task is "two elements in, their product out", so the table is all the data and the
analysis need. :func:`make_group` builds the groups of the paper from a short spec ("Z97",
"Z4xZ7", "D3xZ2", "S4", ...) or loads a user's table from a JSON or CSV file.

Index conventions (the data and the Fourier analysis rely on them):

- every built-in group has its identity at index 0;
- ``Z<M>``: index m is the residue m, so ``table[a, b] == (a + b) % M``;
- products: mixed radix, first factor most significant (in "Z4xZ7", (g, h) is index 7g + h);
- ``D<n>``: index f·n + k is r^k s^f (rotations first), with s r = r⁻¹ s;
- ``S<n>`` / ``A<n>``: permutations of 0..n-1 (even ones for A) in lexicographic order, with
  (a·b)(i) = a(b(i)), i.e. b is applied first;
- ``Q8``: indices 0..7 are 1, -1, i, -i, j, -j, k, -k.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Iterator, Sequence, Union

import torch

MAX_ORDER = 5000  # M² table entries and M² samples: beyond this a typo, not an experiment
MAX_PERM_DEGREE = 6  # S6 has order 720; S7 (5040) is past what the Li2 experiments use
_ASSOC_CHUNK = 1 << 22  # table entries gathered at once in the associativity check

ACCEPTED_SPECS = (
    "'Z<M>' (cyclic, M >= 2), 'D<n>' (dihedral of order 2n, n >= 3), "
    f"'S<n>' (symmetric, 2 <= n <= {MAX_PERM_DEGREE}), "
    f"'A<n>' (alternating, 3 <= n <= {MAX_PERM_DEGREE}), 'Q8' (quaternion), "
    "direct products of these joined by 'x' or '×' (e.g. 'Z4xZ7', 'Z2xZ2xZ9', 'D3xZ2'), "
    "or a path to a Cayley table in a .json or .csv file"
)

TableLike = Union[torch.Tensor, Sequence[Sequence[int]]]


class Group:
    """A finite group of order M given by its Cayley table.

    Build one with :func:`make_group`, :meth:`Group.from_table` or :meth:`Group.from_file`; those
    check the group axioms. The constructor itself trusts its input.

    Attributes:
        name: A short label, e.g. "Z4xZ7".
        table: (M, M) int64, ``table[a, b]`` = index of a·b.
        order: M.
        identity: Index of the identity element.
        inverse: (M,) int64, ``inverse[a]`` = index of a⁻¹.
        is_abelian: Whether a·b = b·a for all a, b.
    """

    def __init__(self, table: torch.Tensor, name: str = "G") -> None:
        """Wrap a table already known to be a group's (no checks; use ``from_table`` otherwise).

        Args:
            table: (M, M) integer tensor, ``table[a, b]`` = index of a·b.
            name: A short label.
        """
        self.name = name
        self.table = table.detach().to(device="cpu", dtype=torch.long).contiguous()
        self.order = int(self.table.shape[0])
        self.identity = _find_identity(self.table)
        assert self.identity is not None, "Group() was given a table without identity"
        # row a holds the identity exactly once, at column a⁻¹
        self.inverse = (self.table == self.identity).to(torch.long).argmax(dim=1)
        self.is_abelian = bool(torch.equal(self.table, self.table.T))

    def __repr__(self) -> str:
        return f"Group({self.name!r}, order={self.order})"

    def element_orders(self) -> torch.Tensor:
        """Order of every element, the least k >= 1 with a^k = e.

        Returns:
            (M,) int64 tensor of element orders.
        """
        M, e = self.order, self.identity
        elems = torch.arange(M)
        power = elems.clone()  # power[a] = a^k
        orders = torch.zeros(M, dtype=torch.long)
        for k in range(1, M + 1):
            orders[(power == e) & (orders == 0)] = k
            if bool((orders > 0).all()):
                break
            power = self.table[power, elems]
        return orders

    def element_order(self, a: int) -> int:
        """Order of element ``a``.

        Args:
            a: Element index in 0..M-1.

        Returns:
            The least k >= 1 with a^k = e.

        Raises:
            ValueError: If ``a`` is not an element index.
        """
        if not 0 <= a < self.order:
            raise ValueError(f"a={a!r} is not an element of {self.name}: expected 0..{self.order - 1}")
        x, k = a, 1
        while x != self.identity:
            x, k = int(self.table[x, a]), k + 1
        return k

    @classmethod
    def from_table(cls, table: TableLike, name: str = "G") -> "Group":
        """Build a group from a Cayley table, checking the group axioms.

        The checks run in the textbook order closure, associativity, identity, inverses, so each
        message is exact: "no identity" is said of an associative table, "no inverse" of a monoid.

        Args:
            table: (M, M) integers (tensor, array or nested lists), ``table[a, b]`` = index of a·b.
            name: A short label for the group.

        Returns:
            The group.

        Raises:
            ValueError: If the table is not square with M >= 2, has entries outside 0..M-1, or
                violates associativity, identity or inverses; the message gives an example.
        """
        return cls(_validate_table(table, "group"), name=name)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "Group":
        """Load a user's Cayley table from a JSON or CSV file and check the group axioms.

        Accepted formats, with element indices 0..M-1:

        - ``.json``: a list of M rows (``[[0, 1], [1, 0]]``), or an object
          ``{"name": "...", "table": [[...], ...]}`` (``name`` optional);
        - ``.csv``: M rows of M comma-separated integers, no header row; blank lines are skipped.

        The group's name is the JSON ``name`` if given, else the file's stem.

        Args:
            path: Path to the file.

        Returns:
            The group.

        Raises:
            ValueError: If the file is missing, unreadable, in another format, or its table is not
                a group's; the message names the file and the problem.
        """
        path = Path(path)
        where = f"group file '{path}'"
        if not path.is_file():
            raise ValueError(f"{where} does not exist (or is not a file)")
        suffix = path.suffix.lower()
        if suffix == ".json":
            table, name = _read_json(path, where)
        elif suffix == ".csv":
            table, name = _read_csv(path, where), path.stem
        else:
            raise ValueError(f"{where} has suffix {path.suffix!r}; accepted: .json or .csv")
        return cls(_validate_table(table, where), name=name)


def make_group(spec: Union[str, os.PathLike]) -> Group:
    """Build a group from a spec such as "Z97", "Z4xZ7", "D3xZ2", "S4", "Q8" or a file path.

    Letters are case-insensitive and whitespace is ignored. See the module docstring for how
    elements are indexed; the identity is at index 0 for every built-in group.

    Args:
        spec: ``Z<M>``, ``D<n>``, ``S<n>``, ``A<n>``, ``Q8``, products of these joined by ``x`` or
            ``×``, or a path to a ``.json``/``.csv`` Cayley table (see :meth:`Group.from_file`).

    Returns:
        The group.

    Raises:
        ValueError: If the spec is not one of the accepted forms, a size is out of range, or the
            file is not a valid group table.
    """
    if isinstance(spec, os.PathLike):
        return Group.from_file(spec)
    if not isinstance(spec, str):
        raise ValueError(f"group={spec!r} is not a string; accepted: {ACCEPTED_SPECS}")
    path = spec.strip()
    if path.lower().endswith((".json", ".csv")):
        return Group.from_file(path)

    factors = re.split(r"[x×X]", re.sub(r"\s+", "", spec))
    parsed = []
    for factor in factors:
        m = re.fullmatch(r"([ZzDdSsAaQq])(\d+)", factor)
        if m is None:
            if os.path.isfile(path):  # a file with another suffix: let from_file say what is wrong
                return Group.from_file(path)
            raise ValueError(f"group={spec!r} is not a known group; accepted: {ACCEPTED_SPECS}")
        parsed.append((m.group(1).upper(), int(m.group(2))))

    for kind, n in parsed:
        _check_factor(spec, kind, n)
    order = math.prod(_factor_order(kind, n) for kind, n in parsed)
    if order > MAX_ORDER:
        raise ValueError(
            f"group={spec!r} has order {order}; accepted: order <= {MAX_ORDER} "
            "(the table and the full data set have M² entries)"
        )

    builders = {"Z": _cyclic, "D": _dihedral, "S": _symmetric, "A": _alternating, "Q": _quaternion}
    tables = [builders[kind](n) for kind, n in parsed]
    table = tables[0]
    for other in tables[1:]:
        table = direct_product_table(table, other)
    return Group(table, name="x".join(f"{kind}{n}" for kind, n in parsed))


def direct_product_table(T1: torch.Tensor, T2: torch.Tensor) -> torch.Tensor:
    """Cayley table of G1 × G2 in mixed radix, G1 most significant: (g, h) ↦ g·|G2| + h.

    Args:
        T1: (M1, M1) table of G1.
        T2: (M2, M2) table of G2.

    Returns:
        (M1·M2, M1·M2) int64 table; identity at 0 when both factors have it at 0.
    """
    M1, M2 = T1.shape[0], T2.shape[0]
    T = T1[:, None, :, None] * M2 + T2[None, :, None, :]  # (M1, M2, M1, M2): [g1, h1, g2, h2]
    return T.reshape(M1 * M2, M1 * M2)


# --- built-in constructions -------------------------------------------------------------------


def _check_factor(spec: str, kind: str, n: int) -> None:
    """Raise ValueError if factor ``kind``+``n`` of ``spec`` is out of range."""
    if kind == "Z" and n < 2:
        problem = f"Z{n}: M must be >= 2 (a cyclic group Z<M> needs at least two elements)"
    elif kind == "D" and n < 3:
        problem = f"D{n}: n must be >= 3 (D<n> is the dihedral group of order 2n)"
    elif kind in "SA" and n > MAX_PERM_DEGREE:
        problem = (f"{kind}{n}: n must be <= {MAX_PERM_DEGREE} "
                   f"(order {_factor_order(kind, n)} is too large for a full Cayley table)")
    elif kind == "S" and n < 2:
        problem = f"S{n}: n must be >= 2"
    elif kind == "A" and n < 3:
        problem = f"A{n}: n must be >= 3 (A<n> is trivial below that)"
    elif kind == "Q" and n != 8:
        problem = f"Q{n}: only Q8 (the quaternion group) is built in"
    else:
        return
    raise ValueError(f"group={spec!r} is not accepted: {problem}; accepted: {ACCEPTED_SPECS}")


def _factor_order(kind: str, n: int) -> int:
    if kind == "Z":
        return n
    if kind == "D":
        return 2 * n
    if kind == "Q":
        return 8
    return math.factorial(n) // (2 if kind == "A" else 1)


def _cyclic(M: int) -> torch.Tensor:
    idx = torch.arange(M)
    return (idx[:, None] + idx[None, :]) % M


def _dihedral(n: int) -> torch.Tensor:
    idx = torch.arange(2 * n)
    k, f = idx % n, idx // n  # element r^k s^f
    # r^k1 s^f1 · r^k2 s^f2 = r^(k1 + (-1)^f1 k2) s^(f1 + f2), since s r^k = r^-k s
    k_out = (k[:, None] + (1 - 2 * f)[:, None] * k[None, :]) % n
    f_out = f[:, None] ^ f[None, :]
    return f_out * n + k_out


def _permutation_table(perms: torch.Tensor) -> torch.Tensor:
    """Table of a set of permutations (rows, lexicographically sorted, closed under composition)."""
    n = perms.shape[1]
    composed = perms[:, perms]  # (M, M, n): [a, b, i] = a(b(i))
    weights = n ** torch.arange(n - 1, -1, -1)  # base-n key preserves lexicographic order
    keys = (perms * weights).sum(-1)
    return torch.searchsorted(keys, (composed * weights).sum(-1))


def _symmetric(n: int) -> torch.Tensor:
    return _permutation_table(torch.tensor(list(itertools.permutations(range(n)))))


def _alternating(n: int) -> torch.Tensor:
    perms = torch.tensor(list(itertools.permutations(range(n))))
    inversions = (perms[:, :, None] > perms[:, None, :]).triu(diagonal=1).sum((1, 2))
    return _permutation_table(perms[inversions % 2 == 0])


def _quaternion(n: int) -> torch.Tensor:
    # unit products among 1, i, j, k as (sign, unit): i·j = k, j·k = i, k·i = j, i² = -1, ...
    unit = [[(1, 0), (1, 1), (1, 2), (1, 3)],
            [(1, 1), (-1, 0), (1, 3), (-1, 2)],
            [(1, 2), (-1, 3), (-1, 0), (1, 1)],
            [(1, 3), (1, 2), (-1, 1), (-1, 0)]]
    table = torch.empty(8, 8, dtype=torch.long)
    for a, b in itertools.product(range(8), repeat=2):
        sign, u = unit[a // 2][b // 2]
        sign *= (-1) ** (a % 2 + b % 2)
        table[a, b] = 2 * u + (sign < 0)  # index 2u is +u, 2u+1 is -u
    return table


# --- validation -------------------------------------------------------------------------------


def _find_identity(table: torch.Tensor) -> int | None:
    idx = torch.arange(table.shape[0])
    ok = (table == idx[None, :]).all(1) & (table.T == idx[None, :]).all(1)  # e·x = x and x·e = x
    hits = ok.nonzero()
    return int(hits[0, 0]) if len(hits) else None


def _as_table(table: TableLike, where: str) -> torch.Tensor:
    """Convert to a square int64 tensor with M >= 2, or raise ValueError."""
    if isinstance(table, (list, tuple)):
        _check_order(len(table), where)
        lengths = [len(row) if isinstance(row, (list, tuple)) else None for row in table]
        for i, length in enumerate(lengths):
            if length != len(table):
                got = "is not a list" if length is None else f"has {length} entries"
                raise ValueError(f"{where}: the Cayley table must be square (M rows of M entries); "
                                 f"it has {len(table)} rows but row {i} {got}")
    try:
        t = torch.as_tensor(table)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{where}: the Cayley table must be an M x M array of integers ({err})")
    if t.dim() != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"{where}: the Cayley table has shape {tuple(t.shape)}; it must be square, "
                         "M x M with table[a, b] = index of a·b")
    _check_order(t.shape[0], where)
    if t.shape[0] < 2:
        raise ValueError(f"{where}: the Cayley table has M={t.shape[0]}; M must be >= 2")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{where}: the Cayley table has dtype {t.dtype}; entries must be integers")
    if t.is_floating_point():
        bad = (t != t.round()).nonzero()
        if len(bad):
            a, b = bad[0].tolist()
            raise ValueError(f"{where}: table[{a}, {b}] = {t[a, b].item()} is not an integer; "
                             "entries must be element indices 0..M-1")
    return t.detach().to(device="cpu", dtype=torch.long)


def _validate_table(table: TableLike, where: str) -> torch.Tensor:
    """Check the group axioms in the order closure, associativity, identity, inverses.

    Associativity is Light's test over a generating set (see :func:`_check_associative`):
    O(M² log M) for a group, about 0.4 s for M = 3000 on one thread.
    """
    T = _as_table(table, where)
    M = T.shape[0]

    out = ((T < 0) | (T >= M)).nonzero()
    if len(out):
        a, b = out[0].tolist()
        raise ValueError(f"{where}: closure fails: table[{a}, {b}] = {int(T[a, b])} is not an "
                         f"element; entries must be indices 0..{M - 1}")

    _check_associative(T, where)

    e = _find_identity(T)
    if e is None:
        raise ValueError(f"{where}: identity missing: no element e with e·x = x·e = x for all x "
                         f"(no row and matching column of the table equal 0..{M - 1})")

    has_inverse = ((T == e) & (T.T == e)).any(1)  # some b with a·b = e = b·a
    if not bool(has_inverse.all()):
        a = int((~has_inverse).nonzero()[0, 0])
        raise ValueError(f"{where}: element {a} has no inverse (no b with {a}·b = b·{a} = {e}, the "
                         f"identity): {_non_permutation(T, a)}")
    return T


def _assoc_failure_at(T: torch.Tensor, g: int) -> tuple[int, int, int] | None:
    """First (x, g, y) in row-major order with (x·g)·y != x·(g·y), or None: O(M²)."""
    M = T.shape[0]
    rows = max(1, _ASSOC_CHUNK // M)
    xg, gy = T[:, g], T[g]  # (M,): x·g and g·y
    for x0 in range(0, M, rows):
        left = T[xg[x0:x0 + rows]]  # (r, M): [x, y] = (x·g)·y
        right = T[x0:x0 + rows][:, gy]  # (r, M): [x, y] = x·(g·y)
        bad = (left != right).nonzero()
        if len(bad):
            i, y = bad[0].tolist()
            return x0 + i, g, y
    return None


def _brute_assoc_failure(T: torch.Tensor) -> tuple[int, int, int] | None:
    """First (a, b, c) in lexicographic order with (a·b)·c != a·(b·c), or None: O(M³)."""
    M = T.shape[0]
    rows = max(1, _ASSOC_CHUNK // (M * M))
    for a0 in range(0, M, rows):
        Ta = T[a0:a0 + rows]  # (r, M): a·b for a in the chunk
        bad = (T[Ta] != Ta[:, T]).nonzero()  # [a, b, c]: (a·b)·c against a·(b·c)
        if len(bad):
            i, b, c = bad[0].tolist()
            return a0 + i, b, c
    return None


def _is_loop(T: torch.Tensor) -> bool:
    """Whether T is a Latin square (rows and columns permutations) with an identity."""
    M = T.shape[0]
    ones = torch.ones(M * M, dtype=torch.long)
    offsets = torch.arange(M)[:, None] * M
    row_hits = torch.zeros(M * M, dtype=torch.long).index_add_(0, (offsets + T).flatten(), ones)
    col_hits = torch.zeros(M * M, dtype=torch.long).index_add_(0, (offsets + T.T).flatten(), ones)
    return bool((row_hits == 1).all() and (col_hits == 1).all()) and _find_identity(T) is not None


def _check_associative(T: torch.Tensor, where: str) -> None:
    """Raise ValueError naming a triple (a, b, c) with (a·b)·c != a·(b·c), if there is one.

    Light's test: the g with (x·g)·y = x·(g·y) for all x, y form a set closed under the product
    (if g, h pass, (x·gh)·y = ((x·g)·h)·y = (x·g)·(h·y) = x·(g·(h·y)) = x·((g·h)·y)). So when every
    element is a product of a set S of passing elements, the table is associative, for any binary
    operation. S is built greedily (the least element not yet a product), and products are found
    by a breadth-first search over right multiplication by S, O(M·|S|) each. Each g is tested in
    O(M²), so a group costs O(M² log M): the subgroup generated at least doubles with every new
    generator, so |S| <= log2 M + 1 (one more for the identity if it comes first).

    A table needing more generators than that is not a group. It is then either non-associative
    (then a loop keeps being tested until the failing generator shows) or fails the identity or
    inverse check that follows; small tables (M <= 256) get the exact O(M³) search instead so the
    textbook order of messages holds for them.
    """
    M = T.shape[0]
    budget = int(math.log2(M)) + 1
    reached = torch.zeros(M, dtype=torch.bool)
    gens: list[int] = []
    loop, triple = None, None
    while triple is None and not bool(reached.all()):
        if len(gens) >= budget:
            if M <= 256:
                triple = _brute_assoc_failure(T)
                break
            if loop is None:
                loop = _is_loop(T)
            if not loop:
                return  # not a group either way; the identity or inverse check names why
        g = int((~reached).nonzero()[0, 0])
        triple = _assoc_failure_at(T, g)
        if triple is not None:
            break
        gens.append(g)
        # every element reached so far, and g, times every generator: a BFS over words in S
        frontier = torch.cat([reached.nonzero()[:, 0], torch.tensor([g])])
        reached[g] = True
        S = torch.tensor(gens)
        while len(frontier):
            products = T[frontier][:, S].flatten().unique()
            frontier = products[~reached[products]]
            reached[frontier] = True
    if triple is not None:
        a, b, c = triple
        raise ValueError(
            f"{where}: associativity fails for (a, b, c) = ({a}, {b}, {c}): "
            f"(a·b)·c = {int(T[T[a, b], c])} but a·(b·c) = {int(T[a, T[b, c]])}")


def _non_permutation(T: torch.Tensor, a: int) -> str:
    """Describe how row or column ``a`` of ``T`` fails to be a permutation."""
    for kind, line in (("row", T[a]), ("column", T[:, a])):
        counts = torch.bincount(line, minlength=len(line))
        if bool((counts != 1).any()):
            v = int((counts > 1).nonzero()[0, 0])
            x, y = (line == v).nonzero()[:2, 0].tolist()
            prod = f"{a}·{x} = {a}·{y}" if kind == "row" else f"{x}·{a} = {y}·{a}"
            return (f"{kind} {a} is not a permutation of 0..{len(line) - 1}, "
                    f"{prod} = {v} (every row and column of a group table is a permutation)")
    return "its row and column are permutations but never meet the identity at the same b"


def _check_order(M: int, where: str) -> None:
    """Raise ValueError if a table of order M is past MAX_ORDER (checked before it is read)."""
    if M > MAX_ORDER:
        raise ValueError(f"{where}: the Cayley table has M={M} entries per row; accepted: order <= "
                         f"{MAX_ORDER} (the table and the full data set have M² entries)")


def _rows_to_table(rows: Iterator[list], where: str) -> torch.Tensor:
    """Fill an (M, M) tensor row by row, M being the first row's length, checked at once."""
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{where} holds no rows; expected M rows of M integers")
    M = len(first)
    _check_order(M, where)
    T = torch.empty(M, M, dtype=torch.long)
    n = 0
    for i, row in enumerate(itertools.chain([first], rows)):
        if i >= M or len(row) != M:
            got = f"row {i} has {len(row)} entries" if i < M else f"it has more than {M} rows"
            raise ValueError(f"{where}: the Cayley table must be square (M rows of M entries); "
                             f"row 0 has {M} entries but {got}")
        T[i] = torch.tensor(row, dtype=torch.long)
        n = i + 1
    if n != M:
        raise ValueError(f"{where}: the Cayley table must be square (M rows of M entries); "
                         f"row 0 has {M} entries but there are {n} rows")
    return T


def _json_int_row(row: object, i: int, where: str) -> list:
    if not isinstance(row, list):
        raise ValueError(f"{where}: the Cayley table must be square (M rows of M entries); "
                         f"row {i} is not a list")
    for j, v in enumerate(row):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
            raise ValueError(f"{where}: table[{i}, {j}] = {v!r} is not an integer; "
                             "entries must be element indices 0..M-1")
    return row


def _read_json(path: Path, where: str) -> tuple[torch.Tensor, str]:
    """Parse a JSON table row by row, so that its order is checked after the first row."""
    decoder, skip = json.JSONDecoder(), json.decoder.WHITESPACE.match
    shapes = ('accepted: a list of rows, or {"name": "...", "table": [[...], ...]}')

    def rows_at(text: str, i: int, end: list) -> Iterator[list]:
        i = skip(text, i + 1).end()  # past "["
        k = 0
        while not text.startswith("]", i):
            if k:
                if not text.startswith(",", i):
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
                i = skip(text, i + 1).end()
            row, i = decoder.raw_decode(text, i)
            yield _json_int_row(row, k, where)
            i, k = skip(text, i).end(), k + 1
        end.append(i + 1)

    def table_at(text: str, i: int) -> tuple[torch.Tensor, int]:
        end: list = []
        return _rows_to_table(rows_at(text, i, end), where), end[0]

    try:
        text = path.read_text()
        i = skip(text, 0).end()
        name, table = path.stem, None
        if text.startswith("[", i):
            table, i = table_at(text, i)
        elif text.startswith("{", i):
            i = skip(text, i + 1).end()
            while not text.startswith("}", i):
                key, i = decoder.raw_decode(text, i)
                i = skip(text, i).end()
                if not text.startswith(":", i):
                    raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
                i = skip(text, i + 1).end()
                if key == "table" and text.startswith("[", i):
                    table, i = table_at(text, i)
                else:
                    value, i = decoder.raw_decode(text, i)
                    if key == "table":
                        raise ValueError(f"{where}: 'table' holds a JSON {type(value).__name__}; {shapes}")
                    if key == "name":
                        name = str(value)
                i = skip(text, i).end()
                if text.startswith(",", i):
                    i = skip(text, i + 1).end()
                elif not text.startswith("}", i):
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
            i += 1
            if table is None:
                raise ValueError(f"{where} is a JSON object without a 'table' key; {shapes}")
        else:
            value, i = decoder.raw_decode(text, i)
            raise ValueError(f"{where} holds a JSON {type(value).__name__}; {shapes}")
        if skip(text, i).end() != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where} is not readable JSON: {err}")
    return table, name


def _read_csv(path: Path, where: str) -> torch.Tensor:
    """Parse a CSV table line by line, so that its order is checked after the first row."""

    def rows(lines: Iterator[list[str]]) -> Iterator[list[int]]:
        for lineno, line in enumerate(lines, start=1):
            if not any(cell.strip() for cell in line):
                continue
            try:
                yield [int(cell) for cell in line]
            except ValueError:
                raise ValueError(f"{where}, line {lineno}: {line!r} is not a row of integers; the CSV "
                                 "must hold M rows of M element indices, with no header row") from None

    try:
        with path.open(newline="") as f:
            return _rows_to_table(rows(csv.reader(f)), where)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{where} is not readable CSV: {err}")
