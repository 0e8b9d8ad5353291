package sandbox

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is the sandbox cluster's key material: one CA that signs the API
// server's serving certificate, the harness's admin client certificate and,
// for a real node, the certificates of the kubelet (client and serving),
// the controller manager, the scheduler and the API server's client to the
// kubelet; and the key pair that signs service account tokens. ECDSA keys, because
// generating them takes microseconds where RSA takes up to a second.
type pki struct {
	dir    string
	caPEM  []byte
	certs  map[string]tlsPair // "apiserver", "admin", and those of nodeLeafs
	saKey  string             // file names, for the API server's flags
	saPub  string
	caFile string
}

type tlsPair struct {
	certPEM, keyPEM []byte
	certFile        string
	keyFile         string
}

// leafCert is a certificate the CA signs, by the name it is kept under.
type leafCert struct {
	name string
	tmpl x509.Certificate
}

func newPKI(dir string) (*pki, error) {
	p := &pki{dir: dir, certs: map[string]tlsPair{}}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "metaguard-e2e-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("signing CA: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	p.caFile = filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(p.caFile, p.caPEM, 0o600); err != nil {
		return nil, fmt.Errorf("writing CA: %w", err)
	}

	leafs := []leafCert{
		{"apiserver", x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), HostIP.AsSlice(), net.IPv4(10, 96, 0, 1)},
		}},
		// system:masters: the harness is the cluster admin; metaguard never
		// uses this identity, it gets a ServiceAccount token.
		{"admin", x509.Certificate{
			Subject:     pkix.Name{CommonName: "metaguard-e2e-admin", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}},
	}
	leafs = append(leafs, nodeLeafs()...)
	for i, l := range leafs {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating %s key: %w", l.name, err)
		}
		tmpl := l.tmpl
		tmpl.SerialNumber = big.NewInt(int64(i + 2))
		tmpl.NotBefore, tmpl.NotAfter = now, now.Add(48*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, fmt.Errorf("signing %s certificate: %w", l.name, err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("encoding %s key: %w", l.name, err)
		}
		pair := tlsPair{
			certPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			keyPEM:   pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
			certFile: filepath.Join(dir, l.name+".crt"),
			keyFile:  filepath.Join(dir, l.name+".key"),
		}
		if err := writeFiles(map[string][]byte{pair.certFile: pair.certPEM, pair.keyFile: pair.keyPEM}); err != nil {
			return nil, err
		}
		p.certs[l.name] = pair
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating service account key: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, fmt.Errorf("encoding service account key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("encoding service account public key: %w", err)
	}
	p.saKey, p.saPub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	return p, writeFiles(map[string][]byte{
		p.saKey: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		p.saPub: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}),
	})
}

func writeFiles(files map[string][]byte) error {
	for name, data := range files {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return nil
}
