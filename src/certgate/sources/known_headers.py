"""Certificate headers of well-known proxies and edges.

certgate removes every one of these from requests whose socket peer is not a
trusted proxy, even when no header source reads them (``strip_known_headers``
defaults to on): an application, a logging filter or an old middleware might
read ``X-SSL-Client-Verify: SUCCESS`` directly, and a client must not be able
to set it. From a trusted proxy they pass through untouched.
"""

from __future__ import annotations

KNOWN_CERTIFICATE_HEADERS: frozenset[str] = frozenset(
    {
        # Cloudflare certificate forwarding and the "TLS client auth" managed transform
        "cf-client-cert-der-base64",
        "cf-client-cert-sha256",
        "cf-cert-presented",
        "cf-cert-verified",
        "cf-cert-revoked",
        "cf-cert-issuer-dn",
        "cf-cert-subject-dn",
        "cf-cert-issuer-dn-rfc2253",
        "cf-cert-subject-dn-rfc2253",
        "cf-cert-issuer-dn-legacy",
        "cf-cert-subject-dn-legacy",
        "cf-cert-serial",
        "cf-cert-issuer-serial",
        "cf-cert-fingerprint-sha256",
        "cf-cert-fingerprint-sha1",
        "cf-cert-sha256",
        "cf-cert-sha1",
        "cf-cert-not-before",
        "cf-cert-not-after",
        "cf-cert-ski",
        "cf-cert-issuer-ski",
        # RFC 9440
        "client-cert",
        "client-cert-chain",
        # Envoy / Istio
        "x-forwarded-client-cert",
        # Traefik
        "x-forwarded-tls-client-cert",
        "x-forwarded-tls-client-cert-info",
        # nginx / Apache / HAProxy conventions, ASP.NET's default
        "x-ssl-client-cert",
        "x-ssl-client-verify",
        "x-ssl-client-dn",
        "x-ssl-client-s-dn",
        "x-ssl-client-i-dn",
        "x-ssl-client-serial",
        "x-ssl-client-fingerprint",
        "x-client-cert",
        "x-client-verify",
        "x-ssl-client-chain",
        *(f"x-ssl-client-chain-{n}" for n in range(8)),
        "x-ssl-client-issuer",
        "x-ssl-client-subject",
        "x-ssl-client-sha256",
        "x-ssl-client-sha1",
        "x-ssl-client-notbefore",
        "x-ssl-client-notafter",
        "x-ssl-client-used",
        "x-ssl-client-escaped-cert",
        "x-ssl-client-raw-cert",
        "x-client-dn",
        "x-client-cert-dn",
        "x-client-issuer-dn",
        "x-client-subject",
        "x-client-issuer",
        "x-client-serial",
        "x-client-fingerprint",
        "ssl-client-s-dn",
        "ssl-client-i-dn",
        "ssl-client-dn",
        "x-client-certificate",
        "x-forwarded-ssl-client-cert",
        "x-forwarded-ssl-client-cert-infos",
        # ingress-nginx
        "ssl-client-cert",
        "ssl-client-verify",
        "ssl-client-subject-dn",
        "ssl-client-issuer-dn",
        # AWS ALB
        "x-amzn-mtls-clientcert",
        "x-amzn-mtls-clientcert-serial-number",
        "x-amzn-mtls-clientcert-issuer",
        "x-amzn-mtls-clientcert-subject",
        "x-amzn-mtls-clientcert-validity",
        "x-amzn-mtls-clientcert-leaf",
        # Azure App Service
        "x-arr-clientcert",
        # Google Cloud load balancer (the names its documentation uses)
        "x-client-cert-present",
        "x-client-cert-chain-verified",
        "x-client-cert-error",
        "x-client-cert-hash",
        "x-client-cert-serial-number",
        "x-client-cert-spiffe",
        "x-client-cert-uri-sans",
        "x-client-cert-dnsname-sans",
        "x-client-cert-valid-not-before",
        "x-client-cert-valid-not-after",
        "x-client-cert-leaf",
        "x-client-cert-chain",
    }
)
