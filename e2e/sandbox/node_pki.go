package sandbox

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
)

// nodeLeafs are the certificates a real node's components use, named as
// kubeadm names their identities, so that the API server's built-in RBAC
// roles and the Node authorizer grant them exactly what they grant on a
// kubeadm cluster. They are made for every sandbox: ECDSA keys cost
// microseconds.
func nodeLeafs() []leafCert {
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return []leafCert{
		// The kubelet's identity towards the API server: the Node
		// authorizer and NodeRestriction limit it to node-a and its pods.
		{"kubelet", x509.Certificate{
			Subject:     pkix.Name{CommonName: "system:node:" + NodeName, Organization: []string{"system:nodes"}},
			ExtKeyUsage: client,
		}},
		// The kubelet's serving certificate, which the API server checks
		// (--kubelet-certificate-authority) before it sends exec there.
		{"kubelet-serving", x509.Certificate{
			Subject:     pkix.Name{CommonName: NodeName},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:    []string{NodeName},
			IPAddresses: []net.IP{HostIP.AsSlice()},
		}},
		// The API server's identity towards the kubelet (exec, logs).
		{"apiserver-kubelet-client", x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
			ExtKeyUsage: client,
		}},
		{"controller-manager", x509.Certificate{
			Subject:     pkix.Name{CommonName: "system:kube-controller-manager"},
			ExtKeyUsage: client,
		}},
		{"scheduler", x509.Certificate{
			Subject:     pkix.Name{CommonName: "system:kube-scheduler"},
			ExtKeyUsage: client,
		}},
	}
}

// apiserverNodeArgs are the API server's flags for a real node: its client
// certificate towards the kubelet (exec, logs), the CA that must have
// signed the kubelet's serving certificate, and NodeRestriction, which
// limits the kubelet to its own Node and pods, as on any production
// cluster.
func (s *Sandbox) apiserverNodeArgs() []string {
	if s.opts.Node == nil {
		return nil
	}
	kc := s.pki.certs["apiserver-kubelet-client"]
	return []string{
		"--kubelet-client-certificate=" + kc.certFile,
		"--kubelet-client-key=" + kc.keyFile,
		"--kubelet-certificate-authority=" + s.pki.caFile,
		"--kubelet-preferred-address-types=InternalIP",
		"--enable-admission-plugins=NodeRestriction",
	}
}
