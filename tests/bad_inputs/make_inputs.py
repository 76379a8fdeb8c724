"""Writes the malformed inputs of the bad-input suite.

  make_inputs.py data DIR FASHION_DIR   small valid idx files and malformed variants
  make_inputs.py models DIR PARENT      malformed copies of a valid model file

Every file goes to DIR. The valid data are the first images of Fashion-MNIST, so that
tiny parents train on them in seconds.
"""
import gzip
import os
import shutil
import struct
import sys

import numpy as np


def idx_bytes(magic, dims, payload):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack(">I", raw[:4])[0]
    ndims = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndims, raw[4:4 + 4 * ndims])
    return np.frombuffer(raw[4 + 4 * ndims:], dtype=np.uint8).reshape(dims)


def write(path, data, compress=False):
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def make_data(out, fashion):
    images = read_idx(os.path.join(fashion, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(fashion, "train-labels-idx1-ubyte.gz"))
    n_train, n_test = 600, 200
    train_x, train_y = images[:n_train], labels[:n_train]
    test_x, test_y = images[n_train:n_train + n_test], labels[n_train:n_train + n_test]
    img = lambda x: idx_bytes(0x803, x.shape, x.tobytes())
    lab = lambda y: idx_bytes(0x801, y.shape, y.tobytes())

    # Valid files: the training set gzip-compressed, the test set plain.
    write(f"{out}/train-images.gz", img(train_x), compress=True)
    write(f"{out}/train-labels.gz", lab(train_y), compress=True)
    write(f"{out}/test-images", img(test_x))
    write(f"{out}/test-labels", lab(test_y))

    # Malformed variants of the test images (paired with the valid test labels).
    good = img(test_x)
    write(f"{out}/empty", b"")
    write(f"{out}/short-header", good[:6])
    write(f"{out}/truncated-pixels", good[:16 + 100 * 28 * 28 + 17])
    write(f"{out}/truncated-pixels.gz", good[:16 + 150 * 28 * 28], compress=True)
    gz = gzip.compress(good)
    write(f"{out}/cut-gzip.gz", gz[: len(gz) // 2])
    write(f"{out}/extra-bytes", good + b"\x00" * 28)
    write(f"{out}/zero-count", idx_bytes(0x803, (0, 28, 28), b""))
    write(f"{out}/huge-side", idx_bytes(0x803, (200, 70000, 28), b""))
    small = test_x[:, ::2, ::2].copy()  # 14 x 14 images
    write(f"{out}/images-14x14", img(small))
    write(f"{out}/labels-199", lab(test_y[:199]))
    write(f"{out}/labels-big", lab(np.where(test_y == 3, 42, test_y).astype(np.uint8)))
    write(f"{out}/wrong-magic", idx_bytes(0x0803 | 0x0C00, test_x.shape, test_x.tobytes()))


def copy_model(parent, path):
    import h5py
    shutil.copyfile(parent, path)
    return h5py.File(path, "r+")


def make_models(out, parent):
    import h5py
    with copy_model(parent, f"{out}/no-format.h5") as f:
        del f.attrs["format"]
    with copy_model(parent, f"{out}/other-format.h5") as f:
        f.attrs["format"] = "pytorch-state-dict"
    with copy_model(parent, f"{out}/version-2.h5") as f:
        f.attrs["format_version"] = np.int64(2)
    with copy_model(parent, f"{out}/other-arch.h5") as f:
        f.attrs["architecture"] = "bert"
    with copy_model(parent, f"{out}/no-fc1.h5") as f:
        del f["params/fc1_w"]
    with copy_model(parent, f"{out}/no-params.h5") as f:
        del f["params"]
    with copy_model(parent, f"{out}/wrong-shape.h5") as f:
        w = f["params/qkv_w"][...]
        del f["params/qkv_w"]
        f["params/qkv_w"] = w[:, :-1, :]
    with copy_model(parent, f"{out}/int-dataset.h5") as f:
        b = f["params/head_b"][...]
        del f["params/head_b"]
        f["params/head_b"] = b.astype(np.int32)
    with copy_model(parent, f"{out}/group-not-dataset.h5") as f:
        del f["params/lnf_g"]
        f.create_group("params/lnf_g")
    with copy_model(parent, f"{out}/bad-heads.h5") as f:
        f.attrs["heads"] = np.int64(3)
    with copy_model(parent, f"{out}/zero-layers.h5") as f:
        f.attrs["layers"] = np.int64(0)
    with copy_model(parent, f"{out}/string-d.h5") as f:
        f.attrs["d"] = "sixteen"
    with copy_model(parent, f"{out}/huge-d.h5") as f:
        f.attrs["d"] = np.int64(1 << 40)
    with copy_model(parent, f"{out}/nan-weight.h5") as f:
        w = f["params/fc2_w"]
        w[0, 3, 5] = np.nan
    with copy_model(parent, f"{out}/inf-weight.h5") as f:
        w = f["params/pos"]
        w[2, 1] = np.inf
    with copy_model(parent, f"{out}/classes-5.h5") as f:
        f.attrs["classes"] = np.int64(5)
        for name in ("head_w", "head_b"):
            w = f["params/" + name][...]
            del f["params/" + name]
            f["params/" + name] = w[:5]
    size = os.path.getsize(parent)
    with open(parent, "rb") as src, open(f"{out}/truncated.h5", "wb") as dst:
        dst.write(src.read(size // 2))
    with open(f"{out}/garbage.h5", "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)


if __name__ == "__main__":
    if sys.argv[1] == "data":
        make_data(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "models":
        make_models(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}; expected data or models")
