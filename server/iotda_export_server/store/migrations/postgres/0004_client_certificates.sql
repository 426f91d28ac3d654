-- Version 4: a principal may be bound to a client certificate (mutual TLS, --tls-client-ca), by the
-- certificate's subject (RFC 4514) or by one of its subject alternative names, so a service can call
-- without a bearer token. NULL: not bound. Each binding names one principal at most.
ALTER TABLE principals ADD COLUMN client_cert_subject TEXT;
ALTER TABLE principals ADD COLUMN client_cert_san TEXT;
CREATE UNIQUE INDEX principals_client_cert_subject ON principals (client_cert_subject);
CREATE UNIQUE INDEX principals_client_cert_san ON principals (client_cert_san);
