package policy

// The types in this file mirror the YAML document one to one. They are
// what an operator writes; compile turns them into the Policy that is
// evaluated. Unknown fields are an error, so a typo ("podselector") never
// silently widens a rule.

// APIVersion and Kind identify a policy document.
const (
	APIVersion = "metaguard.dev/v1alpha1"
	Kind       = "Policy"
)

type fileSpec struct {
	APIVersion      string         `yaml:"apiVersion"`
	Kind            string         `yaml:"kind"`
	Mode            string         `yaml:"mode"`
	Endpoints       []endpointSpec `yaml:"endpoints"`
	DefaultAction   string         `yaml:"defaultAction"`
	Rules           []ruleSpec     `yaml:"rules"`
	CredentialPaths []string       `yaml:"credentialPaths"`
	RateLimit       *rateLimitSpec `yaml:"rateLimit"`
}

type endpointSpec struct {
	Name    string   `yaml:"name"`
	Address string   `yaml:"address"`
	Flavor  string   `yaml:"flavor"`
	Hosts   []string `yaml:"hosts"`
}

type ruleSpec struct {
	Name              string        `yaml:"name"`
	Mode              string        `yaml:"mode"`
	PodSelector       *selectorSpec `yaml:"podSelector"`
	NamespaceSelector *selectorSpec `yaml:"namespaceSelector"`
	ServiceAccounts   []string      `yaml:"serviceAccounts"`
	Endpoints         []string      `yaml:"endpoints"`
	Allow             []allowSpec   `yaml:"allow"`
	Credentials       string        `yaml:"credentials"`
}

// selectorSpec is metav1.LabelSelector with YAML field names; that type
// only carries JSON tags.
type selectorSpec struct {
	MatchLabels      map[string]string `yaml:"matchLabels"`
	MatchExpressions []requirementSpec `yaml:"matchExpressions"`
}

type requirementSpec struct {
	Key      string   `yaml:"key"`
	Operator string   `yaml:"operator"`
	Values   []string `yaml:"values"`
}

type allowSpec struct {
	Methods []string            `yaml:"methods"`
	Paths   []string            `yaml:"paths"`
	Query   map[string][]string `yaml:"query"`
}

type rateLimitSpec struct {
	RequestsPerSecond float64 `yaml:"requestsPerSecond"`
	Burst             int     `yaml:"burst"`
}
