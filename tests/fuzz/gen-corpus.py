#!/usr/bin/env python3
"""gen-corpus.py - (re)generate the seed corpora in tests/fuzz/corpus/.

    python3 tests/fuzz/gen-corpus.py [outdir]     (default: tests/fuzz/corpus)

Every seed is a realistic input for one harness (see the comment at the top
of each fuzz_<harness>.c for its input layout). Chunk maps are written in
chunkmap.c's on-disk format ("BLOBFSM1", little-endian, trailing sha256);
fuzz_chunkmap checks that each of them re-encodes byte for byte with
chunkmap_encode, so they are exactly what blobfs itself writes.
The output is deterministic; existing files are overwritten.
"""
import hashlib
import json
import os
import struct
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(harness, name, data):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def le64(v):
    return struct.pack("<Q", v)


# ---------------------------------------------------------------- names
for i, n in enumerate([
    "llama3", "llama3:8b", "library/llama3:latest", "llama3.2:1b-instruct-q4_K_M",
    "registry.ollama.ai/library/llama3:8b-instruct-q4_K_M",
    "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
    "localhost:5000/ns/model:tag", "http://localhost:11434/library/tinyllama:latest",
    "https://ghcr.io/org/model:v1.0", "127.0.0.1:5000/a/b:c", "HTTP://Example.COM/NS/Model:TAG",
    "jmorganca/mixtral:8x7b", "qwen2.5:0.5b", "mistral:7b-instruct-v0.3-fp16",
    "registry.ollama.ai:443/library/phi3:mini", "a/b/c/d", "../etc/passwd", "model:.hidden",
    "ftp://host/ns/m", "x" * 81, "h" * 351 + "/n/m:t", "_/_:_",
]):
    put("name", "seed-%02d" % i, n)

# ---------------------------------------------------------------- digests
hx = hashlib.sha256(b"llama3 model").hexdigest()
for i, d in enumerate([
    "sha256:" + hx, "sha256-" + hx, "sha256:" + hx.upper(), "sha256:" + hx[:63],
    "sha512:" + hx + hx, "sha256:" + hx + "\n", "sha256-" + "0" * 64,
]):
    put("digest", "seed-%d" % i, d)
put("digest", "seed-set", hashlib.sha256(b"a").digest() * 3 + hashlib.sha256(b"b").digest())

# ---------------------------------------------------------------- manifests
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
OCI = "application/vnd.oci.image.manifest.v1+json"


def desc(mt, data, **extra):
    d = {"mediaType": mt, "digest": sha(data), "size": len(data)}
    d.update(extra)
    return d


ollama = {
    "schemaVersion": 2,
    "mediaType": DOCKER,
    "config": desc("application/vnd.docker.container.image.v1+json", b'{"model_format":"gguf"}'),
    "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": sha(b"weights"),
         "size": 4661211424},
        desc("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
        desc("application/vnd.ollama.image.license", b"META LLAMA 3 COMMUNITY LICENSE"),
        desc("application/vnd.ollama.image.params", b'{"stop":["<|eot_id|>"]}'),
        desc("application/vnd.ollama.image.system", b"You are a helpful assistant."),
    ],
}
put("manifest", "ollama-llama3", json.dumps(ollama, separators=(",", ":")))
put("manifest", "ollama-llama3-pretty", json.dumps(ollama, indent=3))

adapters = json.loads(json.dumps(ollama))
adapters["layers"].append(desc("application/vnd.ollama.image.adapter", b"lora-1"))
adapters["layers"].append(desc("application/vnd.ollama.image.adapter", b"lora-2"))
adapters["layers"].append(desc("application/vnd.ollama.image.projector", b"clip"))
put("manifest", "ollama-adapters", json.dumps(adapters))

oci = {
    "schemaVersion": 2,
    "mediaType": OCI,
    "artifactType": "application/vnd.example.model",
    "config": desc("application/vnd.oci.empty.v1+json", b"{}"),
    "layers": [
        desc("application/vnd.oci.image.layer.v1.tar", b"model.gguf",
             annotations={"org.opencontainers.image.title": "model.gguf"}),
        desc("application/octet-stream", b"tokenizer",
             annotations={"org.opencontainers.image.title": "tokenizer.json",
                          "org.opencontainers.image.created": "2024-05-01T00:00:00Z"}),
        desc("application/octet-stream", b"readme", name="README.md"),
        desc("application/vnd.oci.image.layer.v1.tar+gzip", b"layer"),
    ],
    "annotations": {"org.opencontainers.image.created": "2024-05-01T00:00:00Z"},
}
put("manifest", "oci-annotations", json.dumps(oci))
oci_nomt = json.loads(json.dumps(oci))
del oci_nomt["mediaType"]
put("manifest", "oci-no-mediatype", json.dumps(oci_nomt))

# Repeats: one blob under two names, a name that collides with config.json,
# two layers of one media type.
rep = {
    "schemaVersion": 2, "mediaType": DOCKER,
    "config": desc("application/vnd.docker.container.image.v1+json", b"cfg"),
    "layers": [
        desc("application/vnd.ollama.image.model", b"w", name="a.gguf"),
        desc("application/vnd.ollama.image.model", b"w", name="b.gguf"),
        desc("application/vnd.ollama.image.model", b"w2"),
        desc("application/vnd.ollama.image.model", b"w3"),
        desc("text/plain", b"x", name="config.json"),
        desc("text/plain", b"y", name="model.1"),
        desc("application/vnd.docker.container.image.v1+json", b"cfg"),
    ],
}
put("manifest", "repeats", json.dumps(rep))

# Ollama's tensor format: names are paths; a layer named config.json.
tensor = {
    "schemaVersion": 2, "mediaType": DOCKER,
    "config": desc("application/vnd.docker.container.image.v1+json", b'{"model_format":"safetensors"}'),
    "layers": [desc("application/vnd.ollama.image.tensor", b"t%d" % i,
                    name="text_encoder/model.layers.%d.mlp.down_proj.weight" % i, dtype="BF16",
                    shape=[2560, 9728]) for i in range(4)] + [
        desc("application/vnd.ollama.image.json", b"c1", name="text_encoder/config.json"),
        desc("application/vnd.ollama.image.json", b"c2", name="tokenizer/vocab.json"),
        desc("application/vnd.ollama.image.json", b"c3", name="model_index.json"),
        desc("application/vnd.ollama.image.json", b"c4", name="config.json"),
        desc("application/vnd.ollama.image.model", b"m"),
    ],
}
put("manifest", "ollama-tensor", json.dumps(tensor))
collide = json.loads(json.dumps(tensor))
collide["layers"].append(desc("application/vnd.ollama.image.json", b"c5", name="text_encoder"))
put("manifest", "file-and-directory", json.dumps(collide))

# CNCF ModelPack, ORAS, Docker Model Runner.
modelpack = {
    "schemaVersion": 2, "mediaType": OCI, "artifactType": "application/vnd.cncf.model.manifest.v1+json",
    "config": desc("application/vnd.cncf.model.config.v1+json", b'{"descriptor":{}}'),
    "layers": [
        desc("application/vnd.cncf.model.weight.v1.raw", b"w1",
             annotations={"org.cncf.model.filepath": "model-00001-of-00002.safetensors"}),
        desc("application/vnd.cncf.model.weight.config.v1.raw", b"c",
             annotations={"org.cncf.model.filepath": "config.json"}),
        desc("application/vnd.cncf.model.doc.v1.tar+gzip", b"d",
             annotations={"org.cncf.model.filepath": "docs/README.md"}),
        desc("application/vnd.cnai.model.weight.v1.tar", b"o",
             annotations={"org.cnai.model.filepath": "old/w.bin"}),
    ],
}
put("manifest", "modelpack", json.dumps(modelpack))
oras = {
    "schemaVersion": 2, "mediaType": OCI, "artifactType": "application/vnd.unknown.artifact.v1",
    "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b"{}"), "size": 2,
               "data": "e30="},
    "layers": [
        desc("application/vnd.oci.image.layer.v1.tar", b"f",
             annotations={"org.opencontainers.image.title": "sub/file.txt"}),
        desc("application/vnd.oci.image.layer.v1.tar+gzip", b"dir",
             annotations={"org.opencontainers.image.title": "dir",
                          "io.deis.oras.content.digest": sha(b"dir-tar"),
                          "io.deis.oras.content.unpack": "true"}),
    ],
}
put("manifest", "oras", json.dumps(oras))
dmr = {
    "schemaVersion": 2, "mediaType": OCI,
    "config": desc("application/vnd.docker.ai.model.config.v0.1+json", b'{"config":{"format":"gguf"}}'),
    "layers": [desc("application/vnd.docker.ai.gguf.v3", b"g%d" % i) for i in range(3)] + [
        desc("application/vnd.docker.ai.license", b"l"),
        desc("application/vnd.docker.ai.mmproj", b"p"),
        desc("application/vnd.docker.ai.chat.template.jinja", b"t"),
    ],
}
put("manifest", "docker-model-runner", json.dumps(dmr))

for i, (mt, key) in enumerate([("application/vnd.docker.distribution.manifest.list.v2+json", "manifests"),
                               ("application/vnd.oci.image.index.v1+json", "manifests")]):
    put("manifest", "list-%d" % i, json.dumps({
        "schemaVersion": 2, "mediaType": mt,
        key: [{"mediaType": DOCKER, "digest": sha(b"m1"), "size": 1234,
               "platform": {"architecture": "amd64", "os": "linux"}},
              {"mediaType": DOCKER, "digest": sha(b"m2"), "size": 1235,
               "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}]}))
put("manifest", "index-no-mediatype", json.dumps({"schemaVersion": 2, "manifests": []}))
put("manifest", "schema1", json.dumps({"schemaVersion": 1, "name": "library/x", "tag": "latest",
                                        "fsLayers": [{"blobSum": sha(b"l")}]}))
bad = json.loads(json.dumps(ollama))
bad["layers"][0]["size"] = 4398046511105
bad["layers"][1]["size"] = 1.5
bad["layers"][2]["name"] = "../../etc/passwd"
put("manifest", "bad-fields", json.dumps(bad))
put("manifest", "escapes", '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":'
    '"application/vnd.docker.container.image.v1+json","digest":"sha256:%s","size":3},'
    '"layers":[{"mediaType":"a\\/b.c","digest":"%s","size":1e3,"name":"\\u00e9t\\u00e9"}]}'
    % (DOCKER, hashlib.sha256(b"c").hexdigest(), sha(b"l")))

# ---------------------------------------------------------------- chunk maps
FIXED = hashlib.sha256(b"blobfs fuzz").digest()


def chunkmap(size, chunk, n, digest, bounds=None, sums=None, bits=None):
    body = b"BLOBFSM1" + le64(size) + le64(chunk) + struct.pack("<II", n, 1 if sums else 0) + digest
    if not chunk:
        body += b"".join(le64(b) for b in bounds)
    if sums:
        body += b"".join(sums)
    nb = (n + 7) // 8
    bits = (bits or b"")[:nb].ljust(nb, b"\0")
    if n & 7 and nb:
        bits = bits[:-1] + bytes([bits[-1] & ((1 << (n & 7)) - 1)])
    body += bits
    return body + hashlib.sha256(body).digest()


def auto_chunk(size):
    c = 64 << 10
    while size and (size - 1) // c + 1 > 65536:
        c <<= 1
    return c


def cm_seed(name, mode, size, m):
    put("chunkmap", name, bytes([mode]) + le64(size) + m)


blob = hashlib.sha256(b"some blob").digest()
for i, size in enumerate([1, 65536, 65537, 10 << 20, 4661211424, 0]):
    c = auto_chunk(size)
    n = (size - 1) // c + 1 if size else 0
    cm_seed("fixed-%d" % i, 3, size, chunkmap(size, c, n, blob, bits=b"\xa5\xff\x01" * 20))
    cm_seed("fixed-fixeddigest-%d" % i, 0, size, chunkmap(size, c, n, FIXED, bits=b"\x0f"))
cm_seed("fixed-4k", 3, 100000, chunkmap(100000, 4096, 25, blob, bits=b"\xff\xff\xff\x01"))
b3 = [0, 1000, 5000, 5001]
s3 = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
cm_seed("table-sums", 3, 5001, chunkmap(5001, 0, 3, blob, bounds=b3, sums=s3, bits=b"\x05"))
cm_seed("table-nosums", 3, 5001, chunkmap(5001, 0, 3, blob, bounds=b3, bits=b"\x02"))
cm_seed("fixed-sums", 3, 200000, chunkmap(200000, 65536, 4, blob,
                                          sums=[hashlib.sha256(bytes([i])).digest() for i in range(4)],
                                          bits=b"\x09"))
big = [i * 1000 for i in range(41)]
cm_seed("table-40", 3, 40000, chunkmap(40000, 0, 40, blob, bounds=big, sums=[blob] * 40,
                                       bits=b"\xff\x00\xff\x00\x81"))
# Damaged: wrong checksum (mode 4 fixes it up), wrong length.
m = bytearray(chunkmap(65537, 65536, 2, blob, bits=b"\x03"))
m[-1] ^= 1
cm_seed("damaged-sum", 7, 65537, bytes(m))
cm_seed("damaged-len", 3, 65537, chunkmap(65537, 65536, 2, blob)[:-1])
# Fixed-map mode (8): byte 1 picks the chunk size; size from bytes 1..8 >> 8.
put("chunkmap", "newfixed-0", bytes([8, 4]) + struct.pack("<Q", 123456789)[:7] + b"\1\0\0\0\7\0\0\0")
put("chunkmap", "newfixed-1", bytes([8, 19]) + struct.pack("<Q", 4661211424)[:7] + b"\3\0\0\0")

# ---------------------------------------------------------------- chunksums


def chunksums(size, step, crlf=False):
    lines = []
    for a in range(0, size, step):
        b = min(a + step, size) - 1
        lines.append("%s %d-%d" % (sha(b"chunk %d" % a), a, b))
    nl = "\r\n" if crlf else "\n"
    return (nl.join(lines) + nl).encode()


for i, (size, step) in enumerate([(1, 1), (100, 100), (300, 100), (1 << 20, 1 << 18),
                                  (4661211424, 1 << 30), (1000, 333)]):
    put("chunksums", "seed-%d" % i, le64(size) + b"\0" + chunksums(size, step, crlf=(i == 3)))
put("chunksums", "gap", le64(300) + b"\0" + (
    "%s 0-99\n%s 101-299\n" % (sha(b"a"), sha(b"b"))).encode())
put("chunksums", "tabs", le64(200) + b"\0" + (
    "%s\t0-99\t%s\t100-199" % (sha(b"a"), sha(b"b"))).encode())

# ---------------------------------------------------------------- Content-Range
for i, v in enumerate([
    "bytes 0-1023/146515", "bytes 0-0/1", "bytes 100-199/*", "BYTES 5-10/20", "bytes */1234",
    "bytes 0-18446744073709551614/18446744073709551615", "bytes 10-5/20", "bytes 0-20/20",
    "bytes\t 42-42/43 \t", "bytes 0-99/100x", "bytes 00-099/0100", "bytes=0-99/100",
]):
    put("content_range", "seed-%02d" % i, v)

# ---------------------------------------------------------------- Retry-After
NOW = struct.pack("<I", 1700000000)
for i, v in enumerate([
    "120", "0", " 30 \r\n", "Fri, 31 Dec 1999 23:59:59 GMT", "Wed, 21 Oct 2015 07:28:00 GMT",
    "Tue, 14 Nov 2023 22:13:20 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
    "Sat, 01 Jan 2050 00:00:00 GMT", "18446744073709551615", "99999999999999999999999",
    "Thu, 01 Jan 1970 00:00:00 GMT", "-1", "1.5",
]):
    put("retry_after", "seed-%02d" % i, NOW + v.encode())

# ---------------------------------------------------------------- header lines
DH = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
      'scope="repository:library/ubuntu:pull"')
for i, v in enumerate([
    "Content-Range: bytes 0-99/100\r\n", "WWW-Authenticate: " + DH + "\r\n",
    'www-authenticate: Basic realm="Registry Realm"\r\n', "Retry-After: 120\r\n",
    "Retry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n",
    "Location: https://cdn.example.com/blobs/x?X-Amz-Signature=abc&X-Amz-Expires=600\r\n",
    "Location: /v2/library/llama3/blobs/sha256:%s\r\n" % hx,
    "Content-Length: 4661211424\r\n", "Docker-Content-Digest: sha256:%s\r\n" % hx,
    "Content-Type: application/vnd.docker.distribution.manifest.v2+json\r\n",
    "Content-Location: /v2/library/llama3/chunksums\r\n", "Content-Range:\t bytes 0-0/*\t\r\n",
]):
    put("http_header", "seed-%02d" % i, v)

# ---------------------------------------------------------------- challenges
for i, v in enumerate([
    DH, 'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull"',
    'Basic realm="Registry Realm"', 'Basic realm="registry", charset="UTF-8"',
    'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
    'scope="repository:samalba/my-app:pull,push",error="insufficient_scope"',
    'Bearer realm=https://token.example/,service=reg', 'Bearer realm="a\\"b\\\\c"',
    'Bearer realm="https://a/token", Basic realm="b"', 'BEARER  REALM = "x" , SCOPE = "y"',
    'Basic', 'Bearer', 'Bearer realm=""', 'Negotiate', 'Bearer realm="unterminated',
    'Bearer realm="x",,service="y"',
]):
    put("auth_challenge", "seed-%02d" % i, v)

# ---------------------------------------------------------------- token replies
for i, v in enumerate([
    '{"token":"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln","access_token":"eyJhbGciOiJSUzI1NiJ9.'
    'eyJzdWIiOiJ4In0.c2ln","expires_in":300,"issued_at":"2024-01-01T00:00:00Z"}',
    '{"access_token":"abc","expires_in":3600}', '{"token":"","access_token":"fallback"}',
    '{"token":"x","expires_in":0}', '{"token":"x","expires_in":1e300}',
    '{"token":"x y"}', '{"token":"t","expires_in":"60"}', '[{"token":"x"}]', '{"token":null}',
    '{"token":"\\u00e9\\ud83d\\ude00","expires_in":59.9}',
]):
    put("auth_token", "seed-%02d" % i, v)

# ---------------------------------------------------------------- netrc
# Byte 0 picks the host: 0 registry.ollama.ai, 1 localhost:5000, 2 [::1]:5000,
# 3 ghcr.io, 4 Registry-1.Docker.IO, 5 127.0.0.1:11434, 6 example.com:443,
# 7 the text up to the first newline.
for i, (h, v) in enumerate([
    (0, "machine registry.ollama.ai login alice password s3cret\n"),
    (1, "machine localhost:5000\n  login bob\n  password hunter2\n\nmachine localhost login x password y\n"),
    (1, "machine localhost login plain password p\n"),
    (3, "default login anonymous password guest@\n"),
    (4, "machine registry-1.docker.io login u password p account a\n"),
    (2, 'machine "[::1]:5000" login "quoted user" password "pa\\"ss\\\\word"\n'),
    (6, "macdef init\ncd /pub\nget file\n\nmachine example.com login m password n\n"),
    (0, "machine registry.ollama.ai login\n"),
    (5, "machine 127.0.0.1 password only\n"),
]):
    put("netrc", "seed-%02d" % i, bytes([h]) + v.encode())
put("netrc", "seed-host", b"\x07my.registry:8443\nmachine my.registry login me password pw\n")

# ---------------------------------------------------------------- URLs
BASE = "https://registry.ollama.ai/v2/library/llama3/blobs/sha256:" + hx
for i, v in enumerate([
    BASE + "\nhttps://cdn.example.com/blob?X-Amz-Signature=abc#frag\nlocalhost:5000",
    BASE + "\n/v2/library/llama3/chunksums/sha256:x\n127.0.0.1:11434",
    BASE + "\n../x?y=1\n[::1]:5000",
    BASE + "\n//other.example:8443/z\nLOCALHOST",
    "http://user:pass@localhost:11434/v2/?q=1#f\nrepository:library/x:pull\n127.0.0.1",
    "https://auth.docker.io/token?service=registry.docker.io\nrepository:library/ubuntu:pull\n::1",
    "http://[::1]:5000/v2/\nhttp://[::1]:5000/v2/x\n127.255.255.255:1",
    "https://r.example/v2/\nhttps://R.EXAMPLE:443/v2/\n128.0.0.1",
    "https://r.example/v2/\n%zz\n127.0.0.1.evil.com",
]):
    put("url", "seed-%02d" % i, v)

print("corpora written to", OUT)
