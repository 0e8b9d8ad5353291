package fakecloud

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// The fake instance's metadata: the entries client libraries read
// (cloud.google.com/go/compute/metadata's getters, golang.org/x/oauth2's
// token source) and the ones a proxy must hide (kube-env, token,
// identity), with GCE's value shapes.

func newGCPTree() *gcpTree {
	t := &gcpTree{changed: make(chan struct{})}
	account := func(email string) *gcpNode {
		return dir(false, map[string]*gcpNode{
			"aliases":  leaf([]string{"default"}),
			"email":    leaf(email),
			"scopes":   leaf([]string{"https://www.googleapis.com/auth/cloud-platform"}),
			"token":    {dynamic: t.token},
			"identity": {dynamic: identity(email)},
		})
	}
	guest := dir(true, map[string]*gcpNode{
		// The guest agent publishes the SSH host keys here; clients that
		// trust them are why only a rule may grant a write.
		"hostkeys": dir(true, map[string]*gcpNode{
			"ssh-ed25519": leaf("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2eFakeHostKeyFakeHostKeyFakeHostKey0000"),
		}),
	})
	guest.writable = true
	guest.children["hostkeys"].writable = true
	t.root = dir(false, map[string]*gcpNode{
		"instance": dir(false, map[string]*gcpNode{
			"attributes": dir(true, map[string]*gcpNode{
				"cluster-name":     leaf("e2e"),
				"cluster-location": leaf("us-central1-a"),
				// Multi-line, as GKE's kube-env is: a proxy that strips
				// alt=text output must not assume one line per value.
				"kube-env": leaf("CLUSTER_NAME: e2e\nKUBELET_CERT: ZmFrZS1rdWJlbGV0LWNlcnQ=\nKUBELET_KEY: ZmFrZS1rdWJlbGV0LWtleQ==\n"),
			}),
			"guest-attributes": guest,
			"hostname":         leaf("node-a.c.metaguard-e2e.internal"),
			// Larger than 2^53 on purpose, as real instance ids are: a JSON
			// rewrite through float64 would change it.
			"id":           leaf(int64(4520031799277581759)),
			"machine-type": leaf("projects/123456789012/machineTypes/e2-standard-2"),
			"name":         leaf("node-a"),
			"network-interfaces": array(dir(false, map[string]*gcpNode{
				"access-configs": array(dir(false, map[string]*gcpNode{
					"external-ip": leaf("203.0.113.10"),
					"type":        leaf("ONE_TO_ONE_NAT"),
				})),
				"ip":  leaf("172.31.0.1"),
				"mac": leaf("42:01:0a:80:00:02"),
			})),
			"service-accounts": dir(true, map[string]*gcpNode{
				"default":  account(gcpSAEmail),
				gcpSAEmail: account(gcpSAEmail),
			}),
			"tags": leaf(jsonList{"gke-e2e-node", "http-server"}),
			"zone": leaf("projects/123456789012/zones/us-central1-a"),
		}),
		"project": dir(false, map[string]*gcpNode{
			"attributes": dir(true, map[string]*gcpNode{
				"ssh-keys": leaf("alice:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFake alice\n"),
			}),
			"numeric-project-id": leaf(int64(123456789012)),
			"project-id":         leaf("metaguard-e2e"),
		}),
		// google-auth (Python) and cloud.google.com/go/auth read this;
		// golang.org/x/oauth2/google asks for "universe_domain" instead
		// and takes its 404 as googleapis.com.
		"universe": dir(false, map[string]*gcpNode{
			"universe-domain": leaf("googleapis.com"),
		}),
	})
	return t
}

// token mints a distinct access token per request; it runs from render,
// under t.mu. The document's fields are the ones the Go clients decode
// (golang.org/x/oauth2/google computeSource.Token, cloud.google.com/go/auth
// credentials/compute.go: access_token, expires_in, token_type).
func (t *gcpTree) token(url.Values) (string, int) {
	t.tokens++
	return fmt.Sprintf(`{"access_token":"ya29.e2e-fake-token-%d","expires_in":3599,"token_type":"Bearer"}`, t.tokens), http.StatusOK
}

func identity(email string) func(url.Values) (string, int) {
	return func(q url.Values) (string, int) {
		aud := q.Get("audience")
		if aud == "" {
			return "non-empty audience parameter required\n", http.StatusBadRequest
		}
		enc := base64.RawURLEncoding
		claims, _ := json.Marshal(map[string]any{
			"aud": aud, "azp": email, "email": email, "exp": time.Now().Add(time.Hour).Unix(),
			"iat": time.Now().Unix(), "iss": "https://accounts.google.com", "sub": "123456789012345678901",
		})
		return enc.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." +
			enc.EncodeToString(claims) + "." + enc.EncodeToString([]byte("e2e-fake-signature")), http.StatusOK
	}
}
