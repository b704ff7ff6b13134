// Package e2e holds the cluster doctor's end-to-end test: one lab per
// package run (`netdoctor lab up --name cd`), `netdoctor check` against it
// healthy and with every fault the lab injects, torn down afterwards.
package e2e
