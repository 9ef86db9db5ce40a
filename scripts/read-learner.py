#!/usr/bin/env python3
"""Reads a Continual learner file (docs/checkpoints.md) with numpy, json, hashlib and struct only.

usage: read-learner.py FILE [--json] [--weights-out FILE.npz]

Checks the file (whole, checksum, format and version), then prints its configuration, the tasks it
has learned and its accuracy matrices; with --json, a JSON summary instead; with --weights-out, saves
the model's weights with numpy.savez under their parameter names. Exits 1 with a one-line message
when the file is truncated, corrupted or of another format or version.
"""
import argparse
import hashlib
import json
import struct
import sys

import numpy as np

FORMAT, FORMAT_VERSION = "continual-learner", "1"
# safetensors dtype -> numpy dtype (little-endian); BF16 is read as its 16 raw bits, then widened.
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


class Unreadable(Exception):
    pass


def read(path):
    """(metadata, {name: (dtype, shape, raw bytes)}) of a safetensors file whose checksum matches."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise Unreadable("truncated: %d bytes, not even a header length" % len(data))
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise Unreadable("truncated or not a safetensors file: the header claims %d bytes, the file has %d" % (n, len(data) - 8))
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except ValueError:
        raise Unreadable("corrupted: the header is not JSON")
    metadata = header.pop("__metadata__", {})
    body = data[8 + n:]
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    end = 0
    for name, e in entries:
        begin, stop = e["data_offsets"]
        if begin != end or stop < begin:
            raise Unreadable("corrupted: the data of '%s' is not where the header says" % name)
        end = stop
    if end > len(body):
        raise Unreadable("truncated: the data section has %d of %d bytes" % (len(body), end))
    if end < len(body):
        raise Unreadable("corrupted: %d bytes follow the last tensor" % (len(body) - end))
    # The checksum: SHA-256 over every metadata entry but itself, sorted by key in UTF-16 code-unit
    # order (.NET's ordinal order), as key NUL value NUL in UTF-8; then every tensor entry in data
    # order as name NUL dtype NUL dims-joined-by-commas NUL begin,end NUL; then the data section.
    digest = hashlib.sha256()
    for key in sorted((k for k in metadata if k != "checksum"), key=lambda k: k.encode("utf-16-be")):
        digest.update(key.encode("utf-8") + b"\0" + metadata[key].encode("utf-8") + b"\0")
    for name, e in entries:
        fields = [name, e["dtype"], ",".join(str(d) for d in e["shape"]), "%d,%d" % tuple(e["data_offsets"])]
        digest.update(b"".join(f.encode("utf-8") + b"\0" for f in fields))
    digest.update(body)
    if metadata.get("format") != FORMAT:
        raise Unreadable("not a Continual learner file (format %r)" % metadata.get("format"))
    if metadata.get("checksum") != digest.hexdigest():
        raise Unreadable("corrupted: its checksum does not match its contents")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise Unreadable("learner file format version %s; this script reads version %s" % (metadata.get("format_version"), FORMAT_VERSION))
    tensors = {name: (e["dtype"], tuple(e["shape"]), body[e["data_offsets"][0]:e["data_offsets"][1]]) for name, e in entries}
    return metadata, tensors


def array(dtype, shape, raw):
    """A tensor's bytes as a numpy array (BF16 widened to float32, exactly)."""
    if dtype not in DTYPES:
        raise Unreadable("unsupported dtype %s" % dtype)
    a = np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape)
    if dtype == "BF16":
        a = (a.astype("<u4") << 16).view("<f4")
    return a


def model_weights(learner, tensors):
    """{parameter name: array} of the model, in the model's order."""
    weights = {}
    for name in learner["model"]:
        if name not in tensors:
            raise Unreadable("corrupted: the tensor %s is missing" % name)
        weights[name[len("model."):]] = (tensors[name][0], array(*tensors[name]))
    return weights


def task_count(learner):
    """Tasks of the learner's stream: one unit of every class for JOINT, else the benchmark's tasks."""
    return 1 if learner["config"]["method"]["name"] == "joint" else len(learner["benchmark"]["tasks"])


def matrix_lines(title, m):
    lines = [title + " (row i: after task i+1; column j: accuracy % on task j+1)"]
    lines += ["  " + " ".join("%6.2f" % v for v in row) for row in m] or ["  (no task learned yet)"]
    return lines


def main():
    parser = argparse.ArgumentParser(description="Read a Continual learner file.")
    parser.add_argument("file")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.add_argument("--weights-out", metavar="FILE.npz", help="save the model's weights (numpy.savez)")
    args = parser.parse_args()
    try:
        metadata, tensors = read(args.file)
        learner = json.loads(metadata["learner"])
        weights = model_weights(learner, tensors)
    except (OSError, Unreadable, AttributeError, KeyError, TypeError, ValueError) as e:
        print("read-learner.py: %s: %s" % (args.file, e), file=sys.stderr)
        return 1
    if args.weights_out:
        np.savez(args.weights_out, **{name: a for name, (_, a) in weights.items()})
    record = learner["record"]
    if args.json:
        summary = {
            "formatVersion": int(metadata["format_version"]),
            "checksum": metadata["checksum"],
            "configHash": learner["configHash"],
            "benchmark": learner["benchmark"]["name"],
            "tasksLearned": learner["nextTask"],
            "taskCount": task_count(learner),
            "position": learner["position"],
            "classIl": record["classIl"],
            "taskIl": record["taskIl"],
            # sha256: of the array's little-endian C-order bytes, as saved by --weights-out.
            "model": [{"name": name, "dtype": dtype, "shape": list(a.shape),
                       "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}
                      for name, (dtype, a) in weights.items()],
        }
        print(json.dumps(summary, indent=2))
        return 0
    print("%s: %s version %s, written by Continual %s at %s" % (
        args.file, metadata["format"], metadata["format_version"], learner["continual"], learner["savedUtc"]))
    print("configuration (hash %s):" % learner["configHash"])
    print(json.dumps(learner["config"], indent=2))
    print("%s on %s: %d of %d tasks learned%s" % (
        learner["architecture"], learner["benchmark"]["name"], learner["nextTask"], task_count(learner),
        "" if learner["position"] is None else ", stopped inside task %d (epoch %d, step %d)" % (
            learner["position"]["task"] + 1, learner["position"]["epoch"], learner["position"]["step"])))
    print("\n".join(matrix_lines("Class-IL", record["classIl"]) + matrix_lines("Task-IL", record["taskIl"])))
    print("model tensors:")
    for name, (dtype, a) in weights.items():
        print("  %-40s %-5s %s" % (name, dtype, list(a.shape)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
