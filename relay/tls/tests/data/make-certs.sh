#!/bin/sh
# Regenerates the test PKI used by relay-tls' tests (run from this folder).
# root CA (ECDSA P-256) -> ecdsa leaf; root CA -> RSA intermediate -> rsa leaf.
# Validity is 100 years so the fixtures do not expire under the tests.
set -eu
DAYS=36500
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout ca.key -out ca.pem -days $DAYS -subj "/CN=relay-tls test root" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

# ECDSA P-256 leaf, key in SEC1 form ("EC PRIVATE KEY").
openssl ecparam -name prime256v1 -genkey -noout -out ecdsa.key
openssl req -new -key ecdsa.key -subj "/CN=ecdsa.test" -out ecdsa.csr
printf 'subjectAltName=DNS:localhost,DNS:ecdsa.test,DNS:*.wild.test,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' > leaf.ext
openssl x509 -req -in ecdsa.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days $DAYS -sha256 -extfile leaf.ext -out ecdsa.pem

# RSA intermediate and RSA-2048 leaf, key in PKCS#8 form.
openssl req -new -newkey rsa:2048 -nodes -keyout inter.key -subj "/CN=relay-tls test intermediate" -out inter.csr
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' > inter.ext
openssl x509 -req -in inter.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days $DAYS -sha256 -extfile inter.ext -out inter.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key
openssl req -new -key rsa.key -subj "/CN=rsa.test" -out rsa.csr
printf 'subjectAltName=DNS:localhost,DNS:rsa.test,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > leaf.ext
openssl x509 -req -in rsa.csr -CA inter.pem -CAkey inter.key -CAcreateserial -days $DAYS -sha256 -extfile leaf.ext -out rsa-leaf.pem
cat rsa-leaf.pem inter.pem > rsa.pem

rm -f *.csr *.ext *.srl rsa-leaf.pem ca.key inter.key
