"""recjobs.arrays against numpy's own answers (the oracle), on awkward inputs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from recjobs.arrays import distinct


@settings(max_examples=60, derandomize=True, deadline=None)
@given(hnp.arrays(st.sampled_from([np.int32, np.int64, np.float32]), st.integers(0, 300),
                  elements=st.integers(-5, 5) | st.integers(-(2**31), 2**31 - 1)))
def test_distinct_is_numpys_unique(values):
    got, want = distinct(values), np.unique(values)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_distinct_leaves_its_input_alone_and_takes_2d():
    values = np.array([[3, 1], [3, 2]], np.int64)
    np.testing.assert_array_equal(distinct(values), [1, 2, 3])
    np.testing.assert_array_equal(values, [[3, 1], [3, 2]])


def test_stored_values_read_a_sparse_matrix_at_pairs_as_its_dense_form_does():
    import scipy.sparse as sp

    from recjobs.arrays import stored_values

    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 30, 200), rng.integers(0, 40, 200)
    # Duplicates summed, unsorted columns, an explicit zero: what the dense form says.
    m = sp.csr_matrix((rng.normal(size=200).astype(np.float32), (rows, cols)), shape=(30, 40))
    m.data[0] = 0.0
    dense = m.toarray()
    qr, qc = rng.integers(0, 30, 500), rng.integers(0, 40, 500)
    values, found = stored_values(m, qr, qc)
    coo = m.tocoo()
    stored = {(int(r), int(c)) for r, c in zip(coo.row, coo.col, strict=True)}
    np.testing.assert_array_equal(found, [(int(r), int(c)) in stored for r, c in zip(qr, qc, strict=True)])
    np.testing.assert_allclose(values, dense[qr, qc], rtol=1e-6)
    empty_values, empty_found = stored_values(sp.csr_matrix((3, 4), dtype=np.float32), [0, 2], [1, 3])
    assert not empty_found.any() and not empty_values.any()
