#!/usr/bin/env bash
# Regenerates shared/tests/fixtures/unionpay_5.0.0_request.txt: the fields of
# yansongda-pay/signed_request_0 as a 5.0.0 message, signed the 5.0.0 way
# (RSA-PKCS1-SHA1 over lowercase hex(SHA-1(S))) with the merchant TEST key
# whose certificate (serial = certId 69903319369) is in ../shared/vectors.
# paynotify only verifies 5.0.0 signatures, so this fixture is made with openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
vectors=${PAYNOTIFY_VECTORS:-../shared/vectors}
key=$vectors/unionpay/certs/acp_test_sign_2021-2026.key.pem
python3 - "$vectors/unionpay/yansongda-pay/signed_request_0.formurlencoded.txt" "$key" <<'PY' > shared/tests/fixtures/unionpay_5.0.0_request.txt
import sys, urllib.parse, hashlib, subprocess, base64
pairs = urllib.parse.parse_qsl(open(sys.argv[1]).read(), keep_blank_values=True)
fields = {k: v for k, v in pairs if k != "signature"}
fields["version"] = "5.0.0"
s = "&".join(f"{k}={fields[k]}" for k in sorted(fields))
digest = hashlib.sha1(s.encode()).hexdigest().encode()
sig = subprocess.run(["openssl", "dgst", "-sha1", "-sign", sys.argv[2]], input=digest, capture_output=True, check=True).stdout
fields["signature"] = base64.b64encode(sig).decode()
sys.stdout.write(urllib.parse.urlencode(fields))
PY
echo "wrote shared/tests/fixtures/unionpay_5.0.0_request.txt"
