//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// probeLine is one attempt of `podclient probe`.
type probeLine struct {
	N      int       `json:"n"`
	Time   time.Time `json:"time"`
	Status int       `json:"status"`
	Error  string    `json:"error"`
}

// probeLog reads a probe pod's attempts from its container log.
func (n *realNode) probeLog(w workload) []probeLine {
	n.t.Helper()
	out := n.kubectl("-n", w.Namespace, "logs", w.Name, "-c", "workload")
	var lines []probeLine
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var l probeLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			n.t.Fatalf("probe log line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	return lines
}

func checkRollingUpdate(t *testing.T, n *realNode) {
	// A workload that asks for the role listing ten times a second for the
	// whole rollout: through metaguard it gets 403; while no metaguard
	// pod runs, the rules stay and the connection is refused; a 200 would
	// be the mock answering it directly.
	prober := n.runWorkload("shop", "prober", nil, map[string]string{"app": "prober"}, "probe", credsURL, "100ms", "6000")
	eventually(t, 30*time.Second, func() bool {
		lines := n.probeLog(prober)
		return len(lines) > 0 && lines[len(lines)-1].Status == 403
	})

	repo, _ := splitRef(t, n.image)
	rolled := repo + ":rolled"
	if err := n.s.TagImage(n.ctx, n.image, rolled); err != nil {
		t.Fatal(err)
	}
	old := n.metaguardPod()
	start := time.Now()
	n.applyInstall(rolled, n.state.policy, true)
	end := time.Now()
	cur := n.metaguardPod()
	if cur.UID == old.UID || cur.Spec.Containers[0].Image != rolled {
		t.Fatalf("after the rollout the pod is %s (%s), want a new pod of %s", cur.Name, cur.Spec.Containers[0].Image, rolled)
	}
	// Let the probe see the new pod answer.
	eventually(t, time.Minute, func() bool {
		served := 0
		for _, l := range n.probeLog(prober) {
			if l.Time.After(end) && l.Status == 403 {
				served++
			}
		}
		return served >= 5
	})

	var during, refused, denied int
	for _, l := range n.probeLog(prober) {
		if l.Status == 200 {
			t.Errorf("attempt %d at %s reached the IMDS directly (200)", l.N, l.Time.Format(time.RFC3339Nano))
		}
		if l.Time.After(start) && l.Time.Before(end) {
			during++
			switch {
			case l.Status == 403:
				denied++
			case l.Status == 0:
				refused++
			}
		}
	}
	t.Logf("rollout took %v; %d attempts during it: %d answered 403 by metaguard, %d failed to connect (no pod, rules kept)",
		end.Sub(start).Round(100*time.Millisecond), during, denied, refused)
	if during < 10 {
		t.Fatalf("only %d probe attempts during the rollout: the probe did not cover it", during)
	}
	n.kubectl("-n", "shop", "delete", "pod", "prober", "--wait=false")
}

func checkUninstall(t *testing.T, n *realNode, bystander workload, before podResult) {
	// The operator guide's uninstall, step by step.
	n.writeGuideFile("Uninstall", "cleanup/kustomization.yaml", n.state.ref, nil)
	n.runGuide("Uninstall")
	n.kubectl("wait", "--for=delete", "namespace/metaguard", "--timeout=120s")

	if rules := n.iptablesSave(); strings.Contains(rules, "METAGUARD") {
		t.Errorf("metaguard's rules are still on the node:\n%s", rules)
	}
	if r := n.get(bystander, credsURL); r.Status != 200 || r.Body != before.Body {
		t.Errorf("after the uninstall a pod reads %+v, want what it read before metaguard (%q)", r, before.Body)
	}
	status, direct := n.nodeGet(seedURL)
	if r := n.get(workload{"metadata-access", "pod1"}, seedURL); r.Status != status || r.Body != direct {
		t.Errorf("pod1 after the uninstall: %+v, want the service's own answer %d %q", r, status, direct)
	}
}
