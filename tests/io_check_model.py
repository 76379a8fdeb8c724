"""Check a ViT model file written by `test_io_vit --export PATH` with h5py or h5dump,
or write one with h5py for `test_io_vit --import PATH`.

Usage: io_check_model.py h5py PATH
       io_check_model.py h5dump PATH H5DUMP
       io_check_model.py write PATH

The shapes come from the table in docs/FORMAT.md, recomputed here from the attributes.
Parameter i of the model, counted in buffer order across the tensors, was set to
((i * 7919) % 10007) / 1024 - 4, so every value is checked exactly. Exits 1 on failure.
"""

import re
import subprocess
import sys

import numpy as np

NAMES = ["patch_w", "patch_b", "cls", "pos", "ln1_g", "ln1_b", "qkv_w", "qkv_b",
         "proj_w", "proj_b", "ln2_g", "ln2_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b",
         "lnf_g", "lnf_b", "head_w", "head_b"]

EXPECTED_CONFIG = {"image_size": 28, "channels": 1, "patch": 7, "d": 16, "layers": 2,
                   "heads": 4, "mlp": 40, "classes": 10}

failures = []


def check(ok, message):
    if not ok:
        failures.append(message)
        print("FAIL " + message)


def shapes(cfg):
    """Return the shape of every tensor in buffer order, from the configuration."""
    d, L, f, C = cfg["d"], cfg["layers"], cfg["mlp"], cfg["classes"]
    P = cfg["patch"] * cfg["patch"] * cfg["channels"]
    T = (cfg["image_size"] // cfg["patch"]) ** 2 + 1
    table = {"patch_w": (d, P), "patch_b": (d,), "cls": (d,), "pos": (T, d),
             "ln1_g": (L, d), "ln1_b": (L, d), "qkv_w": (L, 3 * d, d), "qkv_b": (L, 3 * d),
             "proj_w": (L, d, d), "proj_b": (L, d), "ln2_g": (L, d), "ln2_b": (L, d),
             "fc1_w": (L, f, d), "fc1_b": (L, f), "fc2_w": (L, d, f), "fc2_b": (L, d),
             "lnf_g": (d,), "lnf_b": (d,), "head_w": (C, d), "head_b": (C,)}
    return [(name, table[name]) for name in NAMES]


def expected_values(offset, count):
    i = np.arange(offset, offset + count, dtype=np.int64)
    return (((i * 7919) % 10007) / 1024.0 - 4.0).astype(np.float32)


def as_text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def check_h5py(path):
    import h5py

    with h5py.File(path, "r") as f:
        attrs = f.attrs
        check(as_text(attrs.get("format")) == "tfuse-model", f"format is {attrs.get('format')!r}")
        check(int(attrs.get("format_version", -1)) == 1, "format_version is not 1")
        check(as_text(attrs.get("architecture")) == "vit",
              f"architecture is {attrs.get('architecture')!r}")
        cfg = {}
        for key, want in EXPECTED_CONFIG.items():
            check(key in attrs, f"attribute {key} is missing")
            cfg[key] = int(attrs.get(key, -1))
            check(cfg[key] == want, f"attribute {key} = {cfg[key]}, expected {want}")
        check(abs(float(attrs.get("ln_eps", 0.0)) - 1e-6) == 0.0, "ln_eps is not 1e-6")

        params = f["params"]
        check(sorted(params.keys()) == sorted(NAMES),
              f"datasets under /params are {sorted(params.keys())}")
        offset = 0
        for name, shape in shapes(cfg):
            if name not in params:
                continue
            dset = params[name]
            check(dset.shape == shape, f"{name} has shape {dset.shape}, expected {shape}")
            check(dset.dtype == np.dtype("<f4"), f"{name} has dtype {dset.dtype}, expected <f4")
            count = int(np.prod(shape))
            got = dset[()].reshape(-1)
            want = expected_values(offset, count)
            if got.shape == want.shape:
                bad = np.flatnonzero(got != want)
                check(bad.size == 0, f"{name}: {bad.size} values differ, first at flat index "
                      f"{bad[:5].tolist()} (got {got[bad[:5]].tolist()}, "
                      f"expected {want[bad[:5]].tolist()})")
            offset += count
        # A few values by multi-index, to pin the row-major (out, in) layout.
        base = sum(int(np.prod(s)) for n, s in shapes(cfg)[:NAMES.index("qkv_w")])
        d = cfg["d"]
        for layer, row, col in [(0, 0, 0), (1, 2 * d + 3, 5), (1, 3 * d - 1, d - 1)]:
            flat = base + (layer * 3 * d + row) * d + col
            got = params["qkv_w"][layer, row, col]
            check(got == expected_values(flat, 1)[0],
                  f"qkv_w[{layer}, {row}, {col}] = {got}, expected {expected_values(flat, 1)[0]}")
        print(f"h5py: checked {offset} values in {len(NAMES)} datasets of {path}")


def check_h5dump(path, h5dump):
    out = subprocess.run([h5dump, "-H", path], capture_output=True, text=True)
    check(out.returncode == 0, f"h5dump -H exited with {out.returncode}: {out.stderr}")
    text = out.stdout
    check('GROUP "params"' in text, "h5dump shows no group params")
    check(re.search(r'ATTRIBUTE "format"', text) is not None, "h5dump shows no format attribute")
    for name, shape in shapes(EXPECTED_CONFIG):
        dims = ", ".join(str(n) for n in shape)
        pattern = (r'DATASET "%s" \{\s*DATATYPE\s+H5T_IEEE_F32LE\s*'
                   r'DATASPACE\s+SIMPLE \{ \( %s \) / \( %s \) \}') % (name, dims, dims)
        check(re.search(pattern, text) is not None,
              f"h5dump shows no float32 dataset {name} of shape ({dims})")
    print(f"h5dump -H: checked {len(NAMES)} datasets of {path}")


def write_model(path):
    """Write a model as another program would: only from the documented layout, with
    gzip-compressed chunked float64 datasets, int32 and fixed-length string attributes."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["format"] = np.bytes_(b"tfuse-model")
        f.attrs["format_version"] = np.int32(1)
        f.attrs["architecture"] = "vit"
        for key, value in EXPECTED_CONFIG.items():
            f.attrs[key] = np.int32(value)
        f.attrs["ln_eps"] = 1e-6
        f.attrs["comment"] = "written by io_check_model.py"
        params = f.create_group("params")
        offset = 0
        for name, shape in shapes(EXPECTED_CONFIG):
            count = int(np.prod(shape))
            values = expected_values(offset, count).astype(np.float64).reshape(shape)
            params.create_dataset(name, data=values, compression="gzip", chunks=True)
            offset += count
        f.create_dataset("extra/ignored", data=np.zeros(3))
    print(f"wrote {offset} values in {len(NAMES)} datasets to {path}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "h5py":
        check_h5py(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "write":
        write_model(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "h5dump":
        check_h5dump(sys.argv[2], sys.argv[3])
    else:
        print(__doc__)
        return 2
    print(f"io_check_model {sys.argv[1]}: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
