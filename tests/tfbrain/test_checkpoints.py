import struct

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from tests.test_case import TestCase
from tfbrain.checkpoints import read_safetensors, read_state_dict


class ReadSafetensorsTest(TestCase):
    def test_bf16_is_read_and_widened_to_float32(self):
        # values exactly representable in bfloat16, so the round trip is exact
        weight = np.array([[1.5, -2.25], [3.0, 0.0078125]], dtype=ml_dtypes.bfloat16)
        path = self.get_temp_dir() + "/bf16.safetensors"
        save_file({"blocks.0.weight": weight}, path, metadata={"format": "pt"})
        with open(path, "rb") as f:  # the file really holds BF16, as torch writes it
            (header_len,) = struct.unpack("<Q", f.read(8))
            self.assertIn(b'"dtype":"BF16"', f.read(header_len))
        state_dict, hparams = read_state_dict(path)
        self.assertEqual(hparams, {})
        self.assertEqual(state_dict["blocks.0.weight"].dtype, np.float32)
        np.testing.assert_array_equal(state_dict["blocks.0.weight"], weight.astype(np.float32))

    def test_other_dtypes_keep_theirs(self):
        tensors = {"f32": np.arange(6, dtype="<f4").reshape(2, 3), "f16": np.float16([0.5, -1]),
                   "i64": np.int64([7, -3]), "mask": np.array([True, False])}
        path = self.get_temp_dir() + "/mixed.safetensors"
        save_file(tensors, path)
        state_dict = read_safetensors(path)
        self.assertEqual(sorted(state_dict), sorted(tensors))
        for key, value in tensors.items():
            self.assertEqual(state_dict[key].dtype, value.dtype, key)
            np.testing.assert_array_equal(state_dict[key], value)

    def test_arrays_outlive_the_file(self):
        path = self.get_temp_dir() + "/gone.safetensors"
        save_file({"w": np.ones((4,), "float32")}, path)
        state_dict = read_safetensors(path)
        open(path, "wb").close()  # truncate: a view into the old memory map would now fault
        np.testing.assert_array_equal(state_dict["w"], np.ones((4,), "float32"))

    def test_truncated_and_garbled_files_are_named(self):
        path = self.get_temp_dir() + "/cut.safetensors"
        save_file({"w": np.ones((64,), "float32")}, path)
        data = open(path, "rb").read()
        cases = {"cut": data[:-10], "tiny": data[:5],
                 "header": struct.pack("<Q", 10_000) + b"{}",
                 "json": struct.pack("<Q", 5) + b"{nope"}
        for name, content in cases.items():
            bad = f"{self.get_temp_dir()}/{name}.safetensors"
            with open(bad, "wb") as f:
                f.write(content)
            with self.assertRaisesRegex(ValueError, f"{name}.safetensors: not a readable safetensors"):
                read_safetensors(bad)
