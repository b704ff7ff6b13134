// Package collect fills a facts.NodeSnapshot from the live system: netlink
// (links, addresses, routes, rules, neighbours, FDB, IPVS), /proc/sys and
// /proc/net read inside the target network namespace, netfilter dumps from
// the iptables/nft/ipset tools, and the processes and files that describe
// the node's Kubernetes datapath. Every kernel path comes from Options
// (ProcRoot, SysRoot, RootDir) so that tests and offline bundles can point
// it elsewhere. A section that cannot be read is recorded in the snapshot's
// Errors (or Skipped, when the system simply does not have it) and
// collection goes on: partial facts are still facts.
package collect
