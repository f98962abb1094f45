#!/usr/bin/env python3
# Usage: bench/gen-audit-log.py OUT BYTES  (e.g. /tmp/audit-1g.log 1073741824)
# Writes a ~1 GB audit-log-shaped file (records are realistic in shape and size; hashes are
# random, so it is for timing `audit search`, not `audit verify`).
import json, os, random, sys, datetime
random.seed(17)
out = sys.argv[1]; target = int(sys.argv[2])
users = [f"user{i:03d}" for i in range(200)]
hosts = [f"web-{i}" for i in range(1, 40)] + [f"db-{i}" for i in range(1, 10)]
commit = "%040x" % random.getrandbits(160)
t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
size = 0; seq = 0
hexs = lambda: "%064x" % random.getrandbits(256)
with open(out, "w", buffering=1 << 20) as f:
    prev = "0" * 64
    while size < target:
        seq += 1
        ts = (t0 + datetime.timedelta(milliseconds=seq * 9000)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        u = random.choice(users); h = random.choice(hosts)
        kind = random.choice(["forward.opened", "forward.closed", "ssh.auth.ok", "cert.issued", "login.ok", "forward.refused"])
        r = {"seq": seq, "ts": ts, "replica": "drawbridge-1", "event": kind, "prev": prev, "policy_version": commit}
        if kind.startswith("forward") or kind == "ssh.auth.ok":
            r.update({"conn": seq, "peer": "10.1.%d.%d:%d" % (random.randrange(256), random.randrange(256), random.randrange(1024, 65535)),
                      "ssh_user": "root", "key_id": u, "serial": seq, "key_fingerprint": "SHA256:" + hexs()[:43],
                      "ca_fingerprint": "SHA256:" + hexs()[:43]})
            if kind != "ssh.auth.ok":
                r.update({"host": h, "target": h, "address": "10.20.0.%d" % random.randrange(256), "port": 22, "principal": "web-admin", "via": "group ops"})
            if kind == "forward.closed":
                r.update({"bytes_client_to_target": random.randrange(1 << 20), "bytes_target_to_client": random.randrange(1 << 24), "duration_ms": random.randrange(100000), "end": "closed"})
            if kind == "forward.refused":
                r.update({"reason": "no-grant", "message": "no principal of this certificate grants this host"})
        else:
            r.update({"user": u, "method": "password", "client": "10.1.2.%d" % random.randrange(256)})
            if kind == "cert.issued":
                r.update({"serial": seq, "principals": ["web-admin"], "ttl_secs": 900, "key_id": u, "grants": ["web-admin:group ops"]})
        h2 = hexs(); r["hash"] = h2; prev = h2
        line = json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n"
        f.write(line); size += len(line)
print(seq, size)
