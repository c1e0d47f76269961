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
