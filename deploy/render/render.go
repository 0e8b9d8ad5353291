package render

import (
	"fmt"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint/support"
)

// Release is the release name and namespace the chart is rendered for;
// deploy/ is rendered with them.
const (
	ReleaseName = "metaguard"
	Namespace   = "metaguard"
)

// KubeVersion is the Kubernetes version templates see: the oldest the
// chart supports (status.hostIPs).
const KubeVersion = "v1.30.0"

// Manifest renders the chart in dir with values exactly as `helm template
// metaguard dir -n metaguard` does: values validated against the chart's
// schema, documents in Helm's install order, each preceded by a
// "# Source: <chart>/templates/<file>" line.
func Manifest(dir string, values map[string]any) (string, error) {
	chrt, err := loader.Load(dir)
	if err != nil {
		return "", fmt.Errorf("loading chart %s: %w", dir, err)
	}
	kv, err := chartutil.ParseKubeVersion(KubeVersion)
	if err != nil {
		return "", err
	}
	install := action.NewInstall(&action.Configuration{})
	install.DryRun, install.DryRunOption = true, "true"
	install.ClientOnly = true
	install.Replace = true
	install.ReleaseName, install.Namespace = ReleaseName, Namespace
	install.KubeVersion = kv
	rel, err := install.Run(chrt, values)
	if err != nil {
		return "", fmt.Errorf("rendering chart %s: %w", dir, err)
	}
	return rel.Manifest, nil
}

// Files renders the chart as Manifest does and returns the documents of
// each template file, keyed by the file's name under templates/, joined in
// install order. Templates that render nothing are absent.
func Files(dir string, values map[string]any) (map[string]string, error) {
	m, err := Manifest(dir, values)
	if err != nil {
		return nil, err
	}
	docs := map[string][]string{}
	for _, doc := range strings.Split(m, "\n---\n") {
		doc = strings.TrimPrefix(strings.TrimSpace(doc), "---\n")
		src, body, ok := strings.Cut(doc, "\n")
		name, found := strings.CutPrefix(src, "# Source: ")
		if !ok || !found {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			return nil, fmt.Errorf("a rendered document has no Source line: %.80q", doc)
		}
		_, file, _ := strings.Cut(name, "/templates/")
		docs[file] = append(docs[file], body+"\n")
	}
	out := map[string]string{}
	for f, d := range docs {
		out[f] = strings.Join(d, "---\n")
	}
	return out, nil
}

// Lint runs `helm lint --strict` on the chart with values and returns its
// findings above the informational level (in strict mode, warnings fail).
func Lint(dir string, values map[string]any) []string {
	l := action.NewLint()
	l.Strict = true
	l.Namespace = Namespace
	kv, err := chartutil.ParseKubeVersion(KubeVersion)
	if err != nil {
		return []string{err.Error()}
	}
	l.KubeVersion = kv
	res := l.Run([]string{dir}, values)
	var out []string
	for _, m := range res.Messages {
		if m.Severity > support.InfoSev {
			out = append(out, m.Error())
		}
	}
	for _, e := range res.Errors {
		out = append(out, e.Error())
	}
	sort.Strings(out)
	return out
}
