#!/usr/bin/env python3
"""Writes an MNIST-style IDX folder (Fashion-MNIST by default) in the formats `continual` reads from
users (docs/data.md), with the Python standard library only:

  export-idx.py png OUT [--per-class N] [--test-per-class M] [--tasks 0,1,2,3/4,5,6/7,8,9]
      an image folder OUT/train/<class>/*.png, OUT/test/<class>/*.png; with --tasks, one such folder
      per task (OUT/task-1, OUT/task-2, ...)
  export-idx.py csv OUT [--per-class N] [--test-per-class M]
      OUT/train.csv and OUT/test.csv: a header "label,p0,...,p783", pixel integers 0-255

Images are taken in the IDX order, the first N of each class (what --train-per-class N keeps).
"""
import argparse, gzip, os, struct, zlib

NAMES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(folder, name):
    for path, opener in ((os.path.join(folder, name + ".gz"), gzip.open), (os.path.join(folder, name), open)):
        if os.path.exists(path):
            with opener(path, "rb") as f:
                data = f.read()
            dims = data[3]
            shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
            return shape, data[4 + 4 * dims:]
    raise SystemExit(f"error: {name}(.gz) not found in {folder}")


def png(width, height, gray):
    """A grayscale 8-bit PNG."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + gray[y * width:(y + 1) * width] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def first_per_class(labels, limit):
    counts, kept = {}, []
    for i, label in enumerate(labels):
        counts[label] = counts.get(label, 0) + 1
        if limit is None or counts[label] <= limit:
            kept.append(i)
    return kept


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=["png", "csv"])
    parser.add_argument("out")
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="the IDX folder")
    parser.add_argument("--per-class", type=int, help="training images per class (default all)")
    parser.add_argument("--test-per-class", type=int, help="test images per class (default all)")
    parser.add_argument("--tasks", help="png: labels of each task, e.g. 0,1,2,3/4,5,6/7,8,9 (one folder per task)")
    args = parser.parse_args()
    splits = []
    for split, images, labels, limit in (("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte", args.per_class),
                                         ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", args.test_per_class)):
        (count, rows, cols), pixels = read_idx(args.data, images)
        _, label_bytes = read_idx(args.data, labels)
        splits.append((split, rows, cols, pixels, label_bytes, first_per_class(label_bytes, limit)))
    if args.format == "csv":
        os.makedirs(args.out, exist_ok=True)
        for split, rows, cols, pixels, labels, kept in splits:
            size = rows * cols
            with open(os.path.join(args.out, split + ".csv"), "w") as f:
                f.write("label," + ",".join(f"p{p}" for p in range(size)) + "\n")
                for i in kept:
                    f.write(str(labels[i]) + "," + ",".join(str(v) for v in pixels[i * size:(i + 1) * size]) + "\n")
        return
    tasks = [[int(l) for l in t.split(",")] for t in args.tasks.split("/")] if args.tasks else [list(range(10))]
    for k, task in enumerate(tasks):
        root = os.path.join(args.out, f"task-{k + 1}") if args.tasks else args.out
        for split, rows, cols, pixels, labels, kept in splits:
            size = rows * cols
            for i in kept:
                if labels[i] in task:
                    folder = os.path.join(root, split, NAMES[labels[i]])
                    os.makedirs(folder, exist_ok=True)
                    with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
                        f.write(png(cols, rows, pixels[i * size:(i + 1) * size]))


if __name__ == "__main__":
    main()
