#ifndef KEYGATE_CCRYPTO_SHIM_H
#define KEYGATE_CCRYPTO_SHIM_H
// libcrypto (OpenSSL 3, Debian libssl-dev): SHA-256, HMAC, RAND_bytes, CRYPTO_memcmp.
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/crypto.h>
#endif
