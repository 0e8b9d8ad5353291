package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// Mode values for Config.Mode.
const (
	ModeAuto   = "auto"
	ModeNFT    = "nft"
	ModeLegacy = "legacy"
)

// hintChains are created by kubelet (KUBE-KUBELET-CANARY) and kube-proxy
// (KUBE-IPTABLES-HINT) in the mangle table of the back end the node uses;
// kubernetes-sigs/iptables-wrappers trusts them before anything else.
var hintChains = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"}

// builtinChains are counted to find the back end that holds the node's
// rules when no hint chain exists. Counting only built-in chains keeps this
// to a few commands even with kube-proxy's thousands of service chains.
var builtinChains = map[string][]string{
	tableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	tableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	"mangle":    {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

// detectBackend picks the back end the rest of the node uses, the way
// kubernetes-sigs/iptables-wrappers does: a hint chain wins; otherwise the
// back end holding more rules; nft on a tie (a fresh node), as current
// distributions default to it. The string says why, for the log.
func detectBackend(sys system) (backend, string, error) {
	type probe struct {
		r      runner
		tables []string
	}
	probes := map[backend][]probe{}
	for _, b := range backends {
		for _, f := range families {
			r, err := sys.newRunner(f, b)
			if err != nil {
				continue // binary missing: that back end cannot be in use
			}
			tables, err := tablesToInspect(sys, f, b)
			if err != nil {
				return "", "", err
			}
			probes[b] = append(probes[b], probe{r, tables})
			if !slices.Contains(tables, "mangle") {
				continue
			}
			chains, err := r.ListChains("mangle")
			if err != nil {
				continue // e.g. no IPv6 support: the other family still decides
			}
			for _, hint := range hintChains {
				if slices.Contains(chains, hint) {
					return b, fmt.Sprintf("%s chain found in the %s %s mangle table", hint, b, f), nil
				}
			}
		}
	}
	switch {
	case len(probes[backendNFT]) == 0 && len(probes[backendLegacy]) == 0:
		return "", "", fmt.Errorf("neither %s nor %s found in PATH: install iptables", binaryName(ipv4, backendNFT), binaryName(ipv4, backendLegacy))
	case len(probes[backendNFT]) == 0:
		return backendLegacy, "only the legacy binaries are installed", nil
	case len(probes[backendLegacy]) == 0:
		return backendNFT, "only the nft binaries are installed", nil
	}
	counts := map[backend]int{}
	for b, ps := range probes {
		for _, p := range ps {
			counts[b] += countRules(p.r, p.tables)
		}
	}
	if counts[backendLegacy] > counts[backendNFT] {
		return backendLegacy, fmt.Sprintf("legacy holds %d rules in built-in chains, nft %d", counts[backendLegacy], counts[backendNFT]), nil
	}
	return backendNFT, fmt.Sprintf("nft holds %d rules in built-in chains, legacy %d", counts[backendNFT], counts[backendLegacy]), nil
}

// tablesToInspect lists the tables that may be read without side effects:
// listing an nft table never creates it, listing a legacy one does.
func tablesToInspect(sys system, f family, b backend) ([]string, error) {
	all := []string{tableNAT, tableFilter, "mangle"}
	if b != backendLegacy {
		return all, nil
	}
	present, err := sys.legacyTables(f)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(t string) bool { return !slices.Contains(present, t) }), nil
}

// countRules counts rules in the tables' built-in chains, leaving out
// metaguard's own jumps so that a back end is not chosen because metaguard
// once wrote to it.
func countRules(r runner, tables []string) int {
	n := 0
	for _, t := range tables {
		for _, c := range builtinChains[t] {
			lines, err := r.List(t, c)
			if err != nil {
				continue
			}
			for _, line := range lines {
				_, spec, ok := parseRule(line)
				if ok && !slices.ContainsFunc(ownChains, func(c string) bool { return jumpsTo(spec, c) }) {
					n++
				}
			}
		}
	}
	return n
}

// resolveMode turns Config.Mode into a back end.
func resolveMode(mode string, sys system) (backend, string, error) {
	switch mode {
	case "", ModeAuto:
		return detectBackend(sys)
	case ModeNFT:
		return backendNFT, "set by --iptables-mode", nil
	case ModeLegacy:
		return backendLegacy, "set by --iptables-mode", nil
	default:
		return "", "", fmt.Errorf("iptables mode %q: want %s, %s or %s", mode, ModeAuto, ModeNFT, ModeLegacy)
	}
}

// BackendFileName is the file in metaguard's run directory that names the
// back end the daemon chose, for the image's iptables wrapper: everything
// else in the container that runs plain "iptables" (an operator's kubectl
// exec, a debug script) then writes to the same back end as metaguard.
const BackendFileName = "iptables-mode"

// ChooseBackend picks the back end for mode (ModeAuto or empty, ModeNFT,
// ModeLegacy) as New does, and says why. It changes nothing. It answers
// `metaguard iptables-backend`, which the wrapper asks when the daemon has
// not written BackendFileName yet, so that the two never decide apart.
func ChooseBackend(mode string) (backendName, reason string, err error) {
	b, why, err := resolveMode(mode, hostSystem())
	return string(b), why, err
}

// WriteBackendFile records backendName in dir/BackendFileName, replacing
// the file atomically so that the wrapper never reads half of it.
func WriteBackendFile(dir, backendName string) error {
	if backendName != ModeNFT && backendName != ModeLegacy {
		return fmt.Errorf("back end %q: want %s or %s", backendName, ModeNFT, ModeLegacy)
	}
	tmp, err := os.CreateTemp(dir, BackendFileName+".*")
	if err != nil {
		return fmt.Errorf("recording the iptables back end: %w", err)
	}
	_, werr := tmp.WriteString(backendName + "\n")
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("recording the iptables back end: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("recording the iptables back end: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, BackendFileName)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("recording the iptables back end: %w", err)
	}
	return nil
}
