//go:build tools

// Package tools pins staticcheck for make lint, built from the module cache
// like the other tools, never fetched with @version at lint time.
package tools

import _ "honnef.co/go/tools/cmd/staticcheck"
