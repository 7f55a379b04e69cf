"""numpy int arrays into Java int arrays through JPype, on the fast paths (measured in bench/engine.py).

Java classes are looked up inside the functions: importing this module never needs a JVM.
"""

from __future__ import annotations

import numpy as np

_INT32 = np.iinfo(np.int32)


def java_ints(values: np.ndarray):
    """A Java int[] holding `values` (JInt[N] plus slice assignment, the fast path).

    Only int32 goes in: JPype wraps int64 values outside the int range around silently.
    """
    from jpype import JInt

    values = np.asarray(values)
    if values.dtype != np.int32:
        if values.dtype.kind not in "iu" or (values.size and (values.min() < _INT32.min or values.max() > _INT32.max)):
            raise ValueError(f"symbols must be integers within the Java int range, got {values.dtype}")
        values = values.astype(np.int32)
    array = JInt[len(values)]
    array[:] = np.ascontiguousarray(values)
    return array


def java_int_matrix(rows: np.ndarray):
    """A Java int[rows][columns] from a 2-D int32 array.

    Java sees the numpy memory as one direct buffer, and each row is filled by one bulk
    IntBuffer.get (a memory copy in Java): no element passes through Python.
    """
    import jpype.nio
    from jpype import JClass, JInt

    rows = np.ascontiguousarray(rows, dtype=np.int32)
    count, length = rows.shape
    matrix = JInt[count, length]
    if rows.size:
        native = JClass("java.nio.ByteOrder").nativeOrder()
        source = jpype.nio.convertToDirectBuffer(rows).order(native).asIntBuffer()
        for index in range(count):
            source.get(matrix[index])
    return matrix
