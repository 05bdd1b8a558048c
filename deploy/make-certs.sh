#!/bin/sh
# Makes a private CA and one certificate for every qmq service, for deploy/compose.yaml and the
# Kubernetes Secret qmq-tls (docs/security.md). Usage:
#   deploy/make-certs.sh [OUT_DIR] [NAMESPACE]     (default: deploy/certs, qmq)
# Writes OUT_DIR/ca.crt, ca.key (keep it offline), tls.crt, tls.key. The certificate names the compose
# services and the Kubernetes Services of NAMESPACE, plus localhost and 127.0.0.1, and is valid both
# as a server and as a client certificate (serverAuth, clientAuth), so it also serves mTLS between
# services. Re-run it to renew: services reload the files without a restart (file watch or SIGHUP).
set -eu
out="${1:-$(dirname "$0")/certs}"
ns="${2:-qmq}"
days="${QMQ_CERT_DAYS:-365}"
mkdir -p "$out"
cd "$out"
if [ ! -f ca.key ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=qmq private CA" -out ca.crt
fi
cat > tls.ext <<EXT
subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:metaserver,DNS:broker-1,DNS:broker-2,DNS:delay-1,DNS:qmq-metaserver,DNS:qmq-metaserver.${ns}.svc,DNS:*.qmq-broker.${ns}.svc,DNS:*.qmq-delay.${ns}.svc
extendedKeyUsage=serverAuth,clientAuth
basicConstraints=CA:FALSE
EXT
openssl ecparam -name prime256v1 -genkey -noout -out tls.key.new
openssl req -new -key tls.key.new -subj "/CN=qmq" -out tls.csr
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -sha256 -extfile tls.ext -out tls.crt.new
# Key first, then certificate: a reload in between keeps the old pair (a mismatched pair is not applied).
mv tls.key.new tls.key
mv tls.crt.new tls.crt
rm -f tls.csr tls.ext
chmod 600 ca.key
# The containers run as uid 1000 and read the key through the bind mount: keep OUT_DIR itself private.
chmod 644 tls.key
chmod 700 . 2>/dev/null || true
echo "certificates in $out (CA: $out/ca.crt)"
