//! One node's view of the cluster, parsed from `CLUSTER NODES`; it owns the
//! parsing only and talks to no server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;

use anyhow::{Context, Result, bail};

use super::Master;

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLine {
    pub id: String,
    pub addr: SocketAddr,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`, ...
    pub flags: Vec<String>,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// Slots served; slots being imported or migrated (`[...]`) are left out.
    pub slots: Vec<RangeInclusive<u16>>,
}

impl NodeLine {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Known, reachable and not suspected of failing.
    pub fn is_live(&self) -> bool {
        !["fail", "fail?", "handshake", "noaddr"]
            .iter()
            .any(|flag| self.has_flag(flag))
    }

    pub fn is_master(&self) -> bool {
        self.has_flag("master")
    }

    pub fn is_replica(&self) -> bool {
        self.has_flag("slave")
    }

    fn parse(line: &str) -> Result<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            bail!("too few fields");
        }
        // ip:port@busport[,hostname]; the ip is empty until a node learns its own.
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let (ip, port) = address.rsplit_once(':').context("no port in the address")?;
        let ip = match ip {
            "" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip.parse().with_context(|| format!("address {address}"))?,
        };
        let port = port.parse().with_context(|| format!("port of {address}"))?;
        let slots = fields[8..]
            .iter()
            .filter(|slot| !slot.starts_with('['))
            .map(|slot| parse_slots(slot))
            .collect::<Result<_>>()?;
        Ok(Self {
            id: fields[0].to_owned(),
            addr: SocketAddr::new(ip, port),
            flags: fields[2].split(',').map(str::to_owned).collect(),
            master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            slots,
        })
    }
}

fn parse_slots(text: &str) -> Result<RangeInclusive<u16>> {
    let (start, end) = text.split_once('-').unwrap_or((text, text));
    let start = start
        .parse()
        .with_context(|| format!("slot range {text}"))?;
    let end = end.parse().with_context(|| format!("slot range {text}"))?;
    Ok(start..=end)
}

/// Every node one node knows of.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub nodes: Vec<NodeLine>,
}

impl ClusterView {
    pub fn parse(text: &str) -> Result<Self> {
        let nodes = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| NodeLine::parse(line).with_context(|| format!("line {line:?}")))
            .collect::<Result<_>>()?;
        Ok(Self { nodes })
    }

    /// Live masters serving slots, in the order of their first slot.
    pub fn masters(&self) -> Vec<Master> {
        let mut masters: Vec<Master> = self
            .nodes
            .iter()
            .filter(|n| n.is_live() && n.is_master() && !n.slots.is_empty())
            .map(|n| Master {
                addr: n.addr,
                id: n.id.clone(),
                slots: n.slots.clone(),
            })
            .collect();
        masters.sort_by_key(|m| m.slots.iter().map(|r| *r.start()).min());
        masters
    }

    /// The live master serving `slot`.
    pub fn owner_of(&self, slot: u16) -> Option<&NodeLine> {
        self.nodes
            .iter()
            .find(|n| n.is_live() && n.is_master() && n.slots.iter().any(|r| r.contains(&slot)))
    }

    /// The nodes replicating `master_id`.
    pub fn replicas_of<'a>(&'a self, master_id: &'a str) -> impl Iterator<Item = &'a NodeLine> {
        self.nodes
            .iter()
            .filter(move |n| n.master_id.as_deref() == Some(master_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001,host myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f :30003@40003 master,fail - 1426238316232 1426238315232 3 disconnected 10923 10924-16383
";

    #[test]
    fn parses_roles_slots_and_failures() {
        let view = ClusterView::parse(NODES).expect("parses");
        assert_eq!(view.nodes.len(), 4);
        let masters = view.masters();
        assert_eq!(masters.len(), 2, "the failed master is not current");
        assert_eq!(masters[0].addr, "127.0.0.1:30001".parse().expect("addr"));
        assert_eq!(masters[0].slots, vec![0..=5460], "migrating slots left out");
        assert_eq!(masters[1].slots, vec![5461..=10922]);
        assert_eq!(view.nodes[3].slots, vec![10923..=10923, 10924..=16383]);
        assert_eq!(view.nodes[3].addr.port(), 30003);
        assert!(view.owner_of(10923).is_none());
        let replicas: Vec<_> = view.replicas_of(&masters[0].id).collect();
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0].addr.port(), 30004);
    }

    #[test]
    fn rejects_a_line_without_an_address() {
        assert!(ClusterView::parse("abc nonsense master - 0 0 1 connected").is_err());
    }
}
