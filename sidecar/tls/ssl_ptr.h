#pragma once

#include <openssl/ssl.h>

#include <memory>

#include "common/pki/openssl_ptr.h"

namespace meshtls::sidecar {

using SslCtxPtr = std::unique_ptr<SSL_CTX, pki::OpenSslFree<SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, pki::OpenSslFree<SSL_free>>;
using SslSessionPtr = std::unique_ptr<SSL_SESSION, pki::OpenSslFree<SSL_SESSION_free>>;

}  // namespace meshtls::sidecar
