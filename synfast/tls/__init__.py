"""TLS for Synapse deployments: the certdir, its certificates, and ``ssl://`` URLs.

The certdir
    A directory of TLS material in Synapse's layout (docs/reference/synapse-compat.md):
    ``cas/NAME.crt|key|crl``, ``hosts/NAME.crt|key|csr``, ``users/NAME.crt|key|csr|p12``,
    ``code/NAME.crt|key`` and ``crls/NAME.crl``, each file named after the
    certificate's common name.  It is ``--certdir``, else ``$SYN_CERT_DIR``, else
    ``~/.syn/certs``.  A name is checked before it becomes a file name, so none can
    leave the certdir.

Issuing a certificate
    A key is made (RSA 4096 by default), then a certificate with the profile of
    its kind (CA, host, user, code): subject CN=NAME, random serial, SHA-256,
    ten years.  It is self-signed, or signed by a CA of the certdir, and only
    with a CA key that matches the CA's certificate.  Key and certificate are
    placed together or not at all, each under a temporary name first, the key
    0600 in a 0700 directory, and never over an existing file; only a CRL is
    ever replaced.  Revoking adds the certificate's serial to its CA's CRL.

From a URL to a context
    ``ssl://[USER[:PASSWD]@]HOST[:PORT][/PATH][?KEY=VALUE&...]`` is parsed without
    ``ssl`` or ``cryptography``.  On a listener, ``hostname=`` picks the host
    certificates to present (one per name by SNI) and ``ca=`` requires client
    certificates of that CA, honouring its CRL.  On a client, the CAs of the
    certdir are trusted (or only the server certificate pinned by ``certhash=``),
    and the user certificate named by ``certname=``, or found for
    ``USER@HOSTNAME`` and each parent domain, is presented; a URL that asks for
    one the certdir lacks is refused before any connection, as Synapse's client
    refuses it, with the ``easycert`` command that makes it.  Both sides use TLS
    1.2 at least, forward-secret key exchange only and no renegotiation, and
    OpenSSL checks the server name against the certificate, without DNS.

After a handshake
    A client context checks what OpenSSL cannot be told to: that the server's
    certificate has the pinned SHA-256 when ``certhash=`` is given, and otherwise
    that no CRL of the certdir lists it.  The check is made by the context's own
    socket classes, so every connection made with the context gets it.

Modules, lower first (a module imports only modules above it in this list):

    layout   the certdir's kinds and directories, names, default location,
             key types; CertError and CertFileExists (no cryptography)
    url      telepath URLs: parse, format, sanitize, what a URL asks of TLS
             (no ssl, no cryptography)
    x509     loading PEM/DER certificates, keys, CRLs and CSRs; keys, names,
             fingerprints; the certificate and CSR profiles
    store    CertStore: a certdir's paths, listing, loading, and writing into it
             (through synfast.files.durable); the certificate a URL asks for,
             or the error saying how to make it
    crl      gen_crl, revoke, is_revoked; a CRL fit for a listener; revoked serials
    issue    making CA, host, user and code certificates, CSRs, signing CSRs,
             p12 bundles, importing files
    inspect  inventory (``certs list``) and verify (chain, dates, key, usage, SAN,
             revocation)
    certdir  CertDir: a CertStore with every operation above as a method
    easycert Synapse's easycert flags as one request: which operation, in
             easycert's order, and the lines it prints
    check    ``url check``: the files a URL would use and whether each is fit
    context  server and client ssl.SSLContext of a URL; ClientContext's checks
    probe    connect, probe and serve over TLS

Importing this package imports none of them.
"""
