package core

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// DecodeYAML decodes a runner config document into v strictly: an unknown
// key is an error that names its full path and line, ${VAR} and
// ${VAR:-default} in scalar values are expanded through lookup (an unset
// variable without a default is an error naming it), and every problem is
// a *FieldError. A nil lookup knows no variable. Defaults and validation
// are the caller's.
func DecodeYAML(data []byte, lookup func(string) (string, bool), v any) error {
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return &FieldError{Rule: "invalid YAML: " + err.Error()}
	}
	if len(root.Content) == 0 {
		return nil
	}
	changed, err := expand(&root, lookup)
	if err != nil {
		return err
	}
	// yaml.v3 offers strict decoding only on a Decoder, so an expanded tree
	// is re-encoded first; unexpanded input is decoded as written, so that
	// line numbers in errors are the file's own.
	src := data
	if changed {
		if src, err = yaml.Marshal(&root); err != nil {
			return fmt.Errorf("decode yaml: %w", err)
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return yamlError(err, src)
	}
	return nil
}

var varRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// walk visits every node below n with its dotted path (sequence items as
// path[i]) and, for mapping values, the key node. It stops at the first
// visit that returns stop or an error.
func walk(n *yaml.Node, path string, key *yaml.Node, visit func(n, key *yaml.Node, path string) (stop bool, err error)) (bool, error) {
	if stop, err := visit(n, key, path); stop || err != nil {
		return stop, err
	}
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for i, c := range n.Content {
			p := path
			if n.Kind == yaml.SequenceNode {
				p = fmt.Sprintf("%s[%d]", path, i)
			}
			if stop, err := walk(c, p, nil, visit); stop || err != nil {
				return stop, err
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			p := k.Value
			if path != "" {
				p = path + "." + p
			}
			if stop, err := walk(n.Content[i+1], p, k, visit); stop || err != nil {
				return stop, err
			}
		}
	}
	return false, nil
}

// expand replaces ${VAR} and ${VAR:-default} in scalar values. An unset
// variable without a default is an error naming the variable and the key.
// It reports whether it changed anything.
func expand(root *yaml.Node, lookup func(string) (string, bool)) (bool, error) {
	changed := false
	_, err := walk(root, "", nil, func(n, _ *yaml.Node, path string) (bool, error) {
		if n.Kind != yaml.ScalarNode {
			return false, nil
		}
		var missing []string
		v := varRef.ReplaceAllStringFunc(n.Value, func(m string) string {
			sub := varRef.FindStringSubmatch(m)
			if val, ok := lookup(sub[1]); ok {
				return val
			}
			if sub[2] != "" {
				return sub[3]
			}
			missing = append(missing, sub[1])
			return ""
		})
		if len(missing) > 0 {
			return false, Fieldf(path, "environment variable %s is not set (APISIX passes only variables listed under nginx_config.envs; use ${%s:-default} for an optional one)", missing[0], missing[0])
		}
		if v != n.Value {
			n.Value = v
			n.Tag = "!!str"
			n.Style = yaml.DoubleQuotedStyle
			changed = true
		}
		return false, nil
	})
	return changed, err
}

var unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type`)

// yamlError turns yaml.v3's decode errors into field errors. yaml.v3 names
// only the unknown key, so its full path is found in src's node tree by key
// and line.
func yamlError(err error, src []byte) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		var root yaml.Node
		_ = yaml.Unmarshal(src, &root)
		var errs []error
		for _, m := range te.Errors {
			if sub := unknownField.FindStringSubmatch(m); sub != nil {
				line, _ := strconv.Atoi(sub[1])
				field := keyPath(&root, sub[2], line)
				if field == "" {
					field = sub[2]
				}
				errs = append(errs, Fieldf(field, "unknown key (line %s)", sub[1]))
				continue
			}
			errs = append(errs, &FieldError{Rule: strings.TrimPrefix(m, "yaml: ")})
		}
		return errors.Join(errs...)
	}
	return &FieldError{Rule: err.Error()}
}

// keyPath returns the dotted path of the mapping key named name at line.
func keyPath(root *yaml.Node, name string, line int) string {
	found := ""
	_, _ = walk(root, "", nil, func(_, key *yaml.Node, path string) (bool, error) {
		if key != nil && key.Value == name && key.Line == line {
			found = path
			return true, nil
		}
		return false, nil
	})
	return found
}
