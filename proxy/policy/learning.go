package policy

// GrantsCredentials reports whether the policy has a rule called name that
// says credentials: allow. `metaguard suggest` carries a logged credential
// read forward only when the rule the log names still grants it here, so
// a line from another policy, or one naming no rule, never becomes a
// grant.
func (p *Policy) GrantsCredentials(name string) bool {
	for _, r := range p.rules {
		if r.name == name {
			return r.credentialsAllow
		}
	}
	return false
}

// IdentityKeys are the query keys that choose which identity a token of
// the endpoint is for (Azure's client_id, object_id, ...), or nil. The log
// holds no query values, so `metaguard suggest` asks the reviewer to pin
// them.
func (e *Endpoint) IdentityKeys() []string { return e.spec.identityKeys }
