"""numpy int arrays into Java int arrays through JPype, on the fast paths (measured in bench/engine.py).

Java classes are looked up on first use: importing this module never needs a JVM.
"""

from __future__ import annotations

import numpy as np

from shardrun.infodynamics.jclasses import java_class

_INT32 = np.iinfo(np.int32)
# Up to this many elements JArray.of converts an array faster than the fast paths for large ones (a 5
# x 47 matrix: 3 us against 30 us; 48 ints: 2.6 us against 3.8 us); beyond them it is slower (100 x
# 1000: 1.0 ms against 0.75 ms; 10^5 ints: 355 us against 293 us).
ONE_CALL_ELEMENTS = 16_384


def java_ints(values: np.ndarray):
    """A Java int[] holding `values`: JArray.of for a short series, JInt[N] plus slice assignment (the
    fast path for long ones) otherwise.

    Only int32 goes in: JPype wraps int64 values outside the int range around silently.
    """
    from jpype import JArray, JInt

    values = np.asarray(values)
    if values.dtype != np.int32:
        if values.dtype.kind not in "iu" or (values.size and (values.min() < _INT32.min or values.max() > _INT32.max)):
            raise ValueError(f"symbols must be integers within the Java int range, got {values.dtype}")
        values = values.astype(np.int32)
    if 0 < values.size <= ONE_CALL_ELEMENTS and values.ndim == 1:
        return JArray.of(values)
    array = JInt[len(values)]
    array[:] = np.ascontiguousarray(values)
    return array


def java_int_matrix(rows: np.ndarray):
    """A Java int[rows][columns] from a 2-D int32 array.

    A small matrix (the permutations of a small user) is converted by JPype in one call. A large one
    is filled row by row from the numpy memory seen by Java as one direct buffer, each row by one bulk
    IntBuffer.get (a memory copy in Java): no element passes through Python, and no second copy of
    the whole matrix is made (JArray.of is slower there).
    """
    import jpype.nio
    from jpype import JArray, JInt

    rows = np.ascontiguousarray(rows, dtype=np.int32)
    count, length = rows.shape
    if 0 < rows.size <= ONE_CALL_ELEMENTS:
        return JArray.of(rows)
    matrix = JInt[count, length]
    if rows.size:
        native = java_class("java.nio.ByteOrder").nativeOrder()
        source = jpype.nio.convertToDirectBuffer(rows).order(native).asIntBuffer()
        for index in range(count):
            source.get(matrix[index])
    return matrix
