//! The Kubernetes device plugin's decisions (`devns k8s device-plugin`):
//! which devices each resource (a device class) offers the kubelet, which
//! are healthy, and the CDI names a container allocated them gets.

use crate::api::DeviceRow;
use crate::cdi;

/// Device IDs the kubelet takes (its limit).
const MAX_ID: usize = 63;
/// The class whose devices are loop-control slots, not host devices.
pub const LOOP_CLASS: &str = cdi::LOOP;

/// A resource the plugin serves: `devns.io/tun=net/tun`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Class {
    /// The extended resource name pods request (`devns.io/loop`).
    pub resource: String,
    /// Its devices: `loop` (loop-control slots), or `/dev` names, each
    /// exact or a prefix ending in `*` (`vd*`).
    pub devices: Vec<String>,
}

impl Class {
    /// `RESOURCE=DEVICES`: a resource name `domain/name` (a DNS subdomain,
    /// then a name of letters, digits, `-`, `_`, `.`), and a comma list.
    pub fn parse(s: &str) -> Result<Class, String> {
        let (resource, devices) =
            s.split_once('=').ok_or_else(|| format!("{s:?}: a class is RESOURCE=DEVICES (devns.io/tun=net/tun)"))?;
        let Some((domain, name)) = resource.split_once('/') else {
            return Err(format!("{resource:?}: a resource name is DOMAIN/NAME (devns.io/loop)"));
        };
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if domain.len() > 253 || !domain.split('.').all(label) || !name_ok {
            return Err(format!("{resource:?}: a resource name is DOMAIN/NAME (devns.io/loop)"));
        }
        let devices: Vec<String> = devices.split(',').map(|d| d.trim().to_owned()).collect();
        if devices.iter().any(|d| d.is_empty() || d.len() > 255 || d.strip_suffix('*').unwrap_or(d).contains('*')) {
            return Err(format!("{s:?}: devices are names or prefixes ending in *, comma-separated"));
        }
        if devices.iter().any(|d| d == LOOP_CLASS) && devices.len() > 1 {
            return Err(format!("{s:?}: loop is a class of its own"));
        }
        Ok(Class { resource: resource.to_owned(), devices })
    }

    /// Whether the class is loop-control slots.
    pub fn is_loop(&self) -> bool {
        self.devices == [LOOP_CLASS]
    }

    fn matches(&self, name: &str) -> bool {
        self.devices.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    }

    /// The socket the plugin serves the class on, in the kubelet's
    /// directory: `devns-RESOURCE.sock`, `/` as `_`.
    pub fn socket_name(&self) -> String {
        format!("devns-{}.sock", self.resource.replace('/', "_"))
    }
}

/// A device as the kubelet sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offered {
    pub id: String,
    pub healthy: bool,
}

/// The devices `class` offers, given the daemon's `ls`: for `loop`,
/// `slots` interchangeable slots (`loop-0`...), always healthy (each
/// container's loop devices are its own); else each matching device that
/// is not global (those are in every view), by its CDI name, healthy while
/// the host has it (unhealthy: a namespace owns it). Sorted by id.
pub fn offered(class: &Class, rows: &[DeviceRow], slots: usize) -> Vec<Offered> {
    let mut out: Vec<Offered> = if class.is_loop() {
        (0..slots).map(|i| Offered { id: format!("loop-{i}"), healthy: true }).collect()
    } else {
        rows.iter()
            .filter(|r| !r.global && class.matches(&r.name))
            .filter_map(|r| {
                let id = cdi::device_name(&r.name).filter(|id| id.len() <= MAX_ID)?;
                Some(Offered { id, healthy: r.owner == "host" })
            })
            .collect()
    };
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    out
}

/// The CDI names (`KIND=NAME`) of the devices `ids` the kubelet allocated
/// to one container from `class`: loop slots all stand for `KIND=loop`
/// (once), the others for themselves. An id the class does not offer is
/// an error that names it.
pub fn cdi_names(class: &Class, offered: &[Offered], ids: &[String], kind: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for id in ids {
        if !offered.iter().any(|o| &o.id == id) {
            return Err(format!("device {id:?} is not one of {}'s", class.resource));
        }
        let name = if class.is_loop() { format!("{kind}={}", cdi::LOOP) } else { format!("{kind}={id}") };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// `GetPreferredAllocation` for one container: of `available`, the
/// `must` ones first, then the others in the class's order (by id), healthy
/// ones only, `size` in all. A size the available ones cannot fill, or an
/// id the class does not offer, is an error that says so.
pub fn preferred(
    class: &Class,
    offered: &[Offered],
    available: &[String],
    must: &[String],
    size: i32,
) -> Result<Vec<String>, String> {
    let size = usize::try_from(size).ok().filter(|s| *s > 0 && *s <= available.len()).ok_or_else(|| {
        format!("an allocation of {size} from {} available devices of {}", available.len(), class.resource)
    })?;
    if let Some(id) = available.iter().chain(must).find(|id| !offered.iter().any(|o| &o.id == *id)) {
        return Err(format!("device {id:?} is not one of {}'s", class.resource));
    }
    if let Some(id) = must.iter().find(|id| !available.contains(id)) {
        return Err(format!("device {id:?} must be included but is not available"));
    }
    let mut out: Vec<String> = Vec::with_capacity(size);
    for id in must {
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    for o in offered {
        if out.len() >= size {
            break;
        }
        if o.healthy && available.contains(&o.id) && !out.contains(&o.id) {
            out.push(o.id.clone());
        }
    }
    out.truncate(size.max(must.len()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, owner: &str, global: bool) -> DeviceRow {
        DeviceRow { name: name.into(), kind: 'c', major: 1, minor: 1, owner: owner.into(), global }
    }

    #[test]
    fn classes_are_a_resource_and_its_devices() {
        let c = Class::parse("devns.io/disk=vd*, loop3").unwrap();
        assert_eq!(c, Class { resource: "devns.io/disk".into(), devices: vec!["vd*".into(), "loop3".into()] });
        assert_eq!(c.socket_name(), "devns-devns.io_disk.sock");
        assert!(Class::parse("devns.io/loop=loop").unwrap().is_loop());
        assert!(Class::parse("devns.io/x=aä").is_ok(), "a name that ends in a wide character");
        for bad in [
            "devns.io/loop",
            "loop=loop",
            "Devns.io/x=a",
            "devns.io/=a",
            "devns.io/x=",
            "devns.io/x=a*b",
            "devns.io/x=loop,loop3",
            "-a.io/x=a",
            "devns.io/x=ä*ä*",
        ] {
            assert!(Class::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn devices_are_offered_by_cdi_name_healthy_while_the_host_has_them() {
        let rows = [
            row("net/tun", "host", false),
            row("vda", "id:7", false),
            row("vdb", "host", false),
            row("null", "host", true),
        ];
        let c = Class::parse("devns.io/x=vd*,net/tun,null").unwrap();
        assert_eq!(
            offered(&c, &rows, 0),
            [
                Offered { id: "net-tun".into(), healthy: true },
                Offered { id: "vda".into(), healthy: false },
                Offered { id: "vdb".into(), healthy: true },
            ]
        );
        let l = Class::parse("devns.io/loop=loop").unwrap();
        assert_eq!(offered(&l, &rows, 2).iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["loop-0", "loop-1"]);
    }

    #[test]
    fn a_preferred_allocation_takes_the_musts_then_the_class_order() {
        let rows = [row("vda", "host", false), row("vdb", "host", false), row("vdc", "id:3", false)];
        let c = Class::parse("devns.io/disk=vd*").unwrap();
        let o = offered(&c, &rows, 0);
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let all = ids(&["vdc", "vdb", "vda"]);
        assert_eq!(preferred(&c, &o, &all, &[], 1).unwrap(), ["vda"]);
        assert_eq!(preferred(&c, &o, &all, &ids(&["vdb"]), 2).unwrap(), ["vdb", "vda"]);
        // An unhealthy one is not preferred, however available.
        assert_eq!(preferred(&c, &o, &all, &[], 3).unwrap(), ["vda", "vdb"]);
        assert!(preferred(&c, &o, &all, &[], 0).unwrap_err().contains("an allocation of 0"));
        assert!(preferred(&c, &o, &all, &[], 4).unwrap_err().contains("from 3 available"));
        assert!(preferred(&c, &o, &ids(&["vdx"]), &[], 1).unwrap_err().contains("\"vdx\""));
        assert!(preferred(&c, &o, &ids(&["vda"]), &ids(&["vdb"]), 1).unwrap_err().contains("not available"));
        let l = Class::parse("devns.io/loop=loop").unwrap();
        let lo = offered(&l, &[], 4);
        assert_eq!(preferred(&l, &lo, &ids(&["loop-3", "loop-1"]), &[], 1).unwrap(), ["loop-1"]);
    }

    #[test]
    fn an_allocation_is_the_devices_cdi_names() {
        let rows = [row("vda", "host", false), row("vdb", "host", false)];
        let c = Class::parse("devns.io/disk=vd*").unwrap();
        let o = offered(&c, &rows, 0);
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            cdi_names(&c, &o, &ids(&["vdb", "vda"]), "devns.io/device").unwrap(),
            ["devns.io/device=vdb", "devns.io/device=vda"]
        );
        assert!(cdi_names(&c, &o, &ids(&["vdc"]), "devns.io/device").unwrap_err().contains("\"vdc\""));
        let l = Class::parse("devns.io/loop=loop").unwrap();
        let lo = offered(&l, &[], 4);
        assert_eq!(cdi_names(&l, &lo, &ids(&["loop-1", "loop-3"]), "k.io/device").unwrap(), ["k.io/device=loop"]);
    }
}
