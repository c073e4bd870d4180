package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io/ioutil"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"time"
)

// clientSPIFFEID is the identity in the example's client certificate.
const clientSPIFFEID = "spiffe://example.org/keystore-client"

// certificates are PEM files of a throwaway CA, a server certificate for 127.0.0.1 and a
// client certificate carrying clientSPIFFEID, for the mutual TLS step.
type certificates struct {
	ca, serverCert, serverKey, clientCert, clientKey string
	clientSubject                                    string
}

func writeCertificates(dir string) (*certificates, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "keystore-example CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	spiffe, _ := url.Parse(clientSPIFFEID)
	c := &certificates{
		ca:            filepath.Join(dir, "ca.pem"),
		serverCert:    filepath.Join(dir, "server.pem"),
		serverKey:     filepath.Join(dir, "server.key"),
		clientCert:    filepath.Join(dir, "client.pem"),
		clientKey:     filepath.Join(dir, "client.key"),
		clientSubject: "CN=keystore-client,O=example",
	}
	if err := writePEM(c.ca, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	leaves := []struct {
		template  *x509.Certificate
		cert, key string
	}{
		{&x509.Certificate{
			SerialNumber: big.NewInt(2),
			Subject:      pkix.Name{CommonName: "keystore"},
			IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}, c.serverCert, c.serverKey},
		{&x509.Certificate{
			SerialNumber: big.NewInt(3),
			Subject:      pkix.Name{CommonName: "keystore-client", Organization: []string{"example"}},
			URIs:         []*url.URL{spiffe},
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, c.clientCert, c.clientKey},
	}
	for _, leaf := range leaves {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		leaf.template.NotBefore, leaf.template.NotAfter = now.Add(-time.Minute), now.Add(time.Hour)
		leaf.template.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, leaf.template, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, err
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := writePEM(leaf.cert, "CERTIFICATE", der); err != nil {
			return nil, err
		}
		if err := writePEM(leaf.key, "EC PRIVATE KEY", keyDER); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func writePEM(path, kind string, der []byte) error {
	return ioutil.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}
