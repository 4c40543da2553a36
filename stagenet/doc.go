// Package stagenet gives a stage a network of its own: a network
// namespace with its own loopback and a veth pair to the host, from a /30
// of a subnet (DefaultSubnet) that the agents of a machine share. What the
// stage sends leaves through the host, masqueraded, except to the host
// itself and to other stages: firewall rules drop those. So a stage
// reaches the outside world but no port on the agent's machine, the NATS
// server's among them, whether the server listens on loopback or on every
// address.
//
// It makes namespaces and links over netlink (vishvananda/netlink, what
// CNI and containerd's ecosystem use), adds the firewall rules with the
// iptables binary once per agent, and needs root. A
// host process joins the namespace through Net.Start (the thread that
// forks it enters the namespace for the fork); a container gets it as its
// OCI network namespace (Net.Path).
package stagenet
