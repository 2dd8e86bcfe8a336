//! The placement round: queued jobs in priority order (FIFO within a priority) are offered to
//! `gaffer-sched` one task at a time; each placed task becomes an attempt and a launch message
//! to its node. A job that cannot be placed gets a pending reason naming what is missing.

use super::model::{port_key, strategy_of, ActiveJob, QueueKey, TaskRt};
use super::transition::{check, move_task};
use super::{refused, Core, CoreError, Effects};
use gaffer_api::ports::{PortMapping, PortSpec, AUTO_PORTS};
use gaffer_api::proto::{ServerMsg, TaskLaunch};
use gaffer_api::spec::DEFAULT_KILL_GRACE;
use gaffer_api::views::AttemptView;
use gaffer_api::{AttemptKey, JobId, TaskState, UnixMs};
use gaffer_sched::{NodeCapacity, Scheduler, Strategy};
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::ops::Bound;

/// Most unreached jobs given a reason per round (see `explain_rest`).
const EXPLAINED_PER_ROUND: usize = 1000;

/// How long a cluster job that does not fit waits before it holds the queue.
pub(super) const GANG_HOLD_MS: u64 = 30_000;

/// What became of a cluster job in a placement round.
enum Gang {
    /// All its placeable replicas were placed.
    Placed,
    /// It does not fit (or has nothing to place); the round goes on.
    Waits,
    /// It does not fit and holds the queue: the round ends.
    Holds,
}

impl<E: Effects> Core<E> {
    /// One placement round.
    pub(super) fn schedule(&mut self, now: UnixMs) {
        if self.queue.is_empty() {
            return;
        }
        let mut names: Vec<String> = self.nodes.keys().cloned().collect();
        names.sort();
        let caps: Vec<NodeCapacity> = names.iter().map(|n| self.capacity(n)).collect();
        let totals = names
            .iter()
            .map(|n| (self.nodes[n].info.cpus, self.nodes[n].info.memory))
            .collect();
        let mut sched = Scheduler::new(caps, totals);
        let mut cursor: Option<QueueKey> = None;
        while !sched.exhausted() {
            let next = match cursor {
                None => self.queue.iter().next().copied(),
                Some(c) => self
                    .queue
                    .range((Bound::Excluded(c), Bound::Unbounded))
                    .next()
                    .copied(),
            };
            let Some(entry) = next else { break };
            cursor = Some(entry);
            let jid = entry.1;
            let demand = self.jobs[&jid].demand();
            let gang = self.jobs[&jid].row.spec.replicas.is_some();
            // Replicas spread over the nodes unless the job says otherwise.
            let default = if gang {
                Strategy::Spread
            } else {
                self.cfg.strategy
            };
            let strategy = strategy_of(self.jobs[&jid].row.spec.strategy, default);
            let mut placed_any = false;
            if gang {
                match self.place_gang(jid, &demand, strategy, now, &mut sched, &names) {
                    Gang::Placed => placed_any = true,
                    Gang::Waits => {}
                    Gang::Holds => {
                        self.explain_rest(
                            &format!("waiting behind cluster job {jid}, which holds the queue until it fits"),
                            cursor,
                            true,
                        );
                        return;
                    }
                }
            }
            while !gang && self.jobs[&jid].has_work() {
                match sched.place(&demand, strategy) {
                    Ok(i) => match self.assign(jid, &names[i], now, &mut sched, i) {
                        Ok(()) => placed_any = true,
                        Err(e) => {
                            refused(&e);
                            break;
                        }
                    },
                    Err(why) => {
                        self.set_reason(jid, Some(why.to_string()));
                        break;
                    }
                }
            }
            if placed_any {
                self.set_reason(jid, None);
                self.touch_job(jid, now);
            }
        }
        if sched.exhausted() {
            let why = if sched.any_ready() {
                "every ready node is fully allocated (no free CPU): waiting for running tasks to end"
            } else {
                "no node is ready"
            };
            self.explain_rest(why, cursor, false);
        }
    }

    /// Places every placeable replica of cluster job `jid` at once, or none. A job that does
    /// not fit waits, reserving nothing; once it has waited [`GANG_HOLD_MS`] while it could
    /// fit on empty nodes, it holds the queue: nothing after it is placed until it fits, so
    /// small tasks behind it cannot starve it (running tasks drain, as under Slurm's
    /// reservation for the top job). Gangs never hold part of a node, so they cannot
    /// deadlock each other.
    fn place_gang(
        &mut self,
        jid: JobId,
        demand: &gaffer_sched::Demand,
        strategy: Strategy,
        now: UnixMs,
        sched: &mut Scheduler,
        names: &[String],
    ) -> Gang {
        let job = &self.jobs[&jid];
        if !job.has_work() {
            return Gang::Waits;
        }
        // A group restart waits until every stopped replica has ended.
        if self.gang_stops.keys().any(|k| k.job == jid) {
            self.set_reason(
                jid,
                Some("restarting its group: waiting for the other replicas to stop".into()),
            );
            return Gang::Waits;
        }
        let job = &self.jobs[&jid];
        let n = job.ready.len() as u32 + (job.row.counts.total - job.row.next_fresh);
        // A shared directory the nodes do not share keeps the replicas on one node: the one
        // it is on, once any replica ran.
        let together = job.row.spec.shared_dir.is_some()
            && !self
                .nodes
                .values()
                .filter(|n| n.ready())
                .all(|n| n.info.shared_storage);
        let mut demand = demand.clone();
        if together {
            demand.node = job.tasks.values().find_map(|t| t.node.clone());
        }
        match sched.place_gang(&demand, n, strategy, together) {
            Ok(nodes) => {
                self.gang_since.remove(&jid);
                for i in nodes {
                    if let Err(e) = self.assign(jid, &names[i], now, sched, i) {
                        refused(&e);
                        break;
                    }
                }
                Gang::Placed
            }
            Err(why) => {
                let since = *self.gang_since.entry(jid).or_insert(now);
                let hold = matches!(why, gaffer_sched::Unfit::Gang { ever: true, .. })
                    && now.saturating_sub(since) >= GANG_HOLD_MS;
                let mut text = why.to_string();
                if hold {
                    text.push_str("; holding the queue: jobs queued after it wait until it starts");
                }
                self.set_reason(jid, Some(text));
                if hold {
                    Gang::Holds
                } else {
                    Gang::Waits
                }
            }
        }
    }

    /// Jobs the round did not reach: they say `why` (with `replace`, also those that already
    /// say why). At most [`EXPLAINED_PER_ROUND`] a round, so a long queue costs little.
    fn explain_rest(&mut self, why: &str, after: Option<QueueKey>, replace: bool) {
        let start = match after {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        let unreached: Vec<JobId> = self
            .queue
            .range((start, Bound::Unbounded))
            .map(|(_, id)| *id)
            .filter(|id| replace || !self.reasons.contains_key(id))
            .take(EXPLAINED_PER_ROUND)
            .collect();
        for id in unreached {
            self.set_reason(id, Some(why.to_string()));
        }
    }

    /// Whether node `name` runs the bridge network (it offers one and has a subnet).
    fn bridged(&self, name: &str) -> bool {
        self.nodes.get(name).is_some_and(|n| n.info.bridge) && self.subnets.contains_key(name)
    }

    /// What the scheduler sees of node `name`.
    fn capacity(&self, name: &str) -> NodeCapacity {
        let node = &self.nodes[name];
        NodeCapacity {
            name: name.to_string(),
            ready: node.ready(),
            allow_host_tasks: node.info.allow_host_tasks,
            cpus_free: (node.info.cpus - node.ledger.cpus()).max(0.0),
            memory_free: node.info.memory.saturating_sub(node.ledger.memory()),
            tasks: node.ledger.len() as u32,
            labels: node.info.labels.clone(),
            bridge: self.bridged(name),
            ports: node.ledger.ports().clone(),
            allow_mounts: node.info.allow_mounts.iter().map(Into::into).collect(),
            // The catalog's images count as present: the node fetches what it lacks.
            images: if node.info.containers {
                node.info
                    .images
                    .iter()
                    .chain(self.catalog.keys())
                    .cloned()
                    .collect()
            } else {
                Default::default()
            },
        }
    }

    /// Places job `jid`'s next task (a ready retry, else its next fresh task) on `node_name`.
    fn assign(
        &mut self,
        jid: JobId,
        node_name: &str,
        now: UnixMs,
        sched: &mut Scheduler,
        node_index: usize,
    ) -> Result<(), CoreError> {
        let job = self.jobs.get_mut(&jid).expect("queued job is active");
        // A ready retry must be pending; refuse before anything changes.
        if let Some((i, t)) = job
            .ready
            .front()
            .and_then(|i| job.tasks.get(i).map(|t| (*i, t)))
        {
            check(jid, i, t.state, TaskState::Assigned)?;
        }
        let index = match job.ready.pop_front() {
            Some(i) => i,
            None => {
                let i = job.row.next_fresh;
                job.row.next_fresh += 1;
                job.tasks.insert(i, TaskRt::fresh());
                job.row.counts.started += 1;
                i
            }
        };
        let t = job.tasks.get_mut(&index).expect("task present");
        move_task(&mut job.row.counts, jid, index, t, TaskState::Assigned)?;
        t.attempt += 1;
        t.node = Some(node_name.to_string());
        t.not_before = None;
        t.ip = None;
        let held = self.nodes.get(node_name).map(|n| n.ledger.ports());
        t.ports = map_ports(&job.row.spec.ports, held);
        let auto: Vec<(u16, u8)> = job
            .row
            .spec
            .ports
            .iter()
            .zip(&t.ports)
            .filter(|(want, _)| want.host.is_none())
            .map(|(_, got)| port_key(got.host, got.protocol))
            .collect();
        sched.take_ports(node_index, &auto);
        let key = AttemptKey {
            job: jid,
            index,
            attempt: t.attempt,
        };
        let row = t.row(jid, index);
        let ports = t.ports.clone();
        let job = &self.jobs[&jid];
        let mut launch = launch(job, key, &self.catalog);
        launch.ports = ports.clone();
        // A container that names no network gets the node's bridge where it has one.
        if launch.network.is_none() && launch.image.is_some() && self.bridged(node_name) {
            launch.network = Some(gaffer_api::Network::Bridge);
        }
        // The node fetches the catalog's archive unless its copy of the image is that one.
        let fetching = match (&launch.image, &launch.image_archive) {
            (Some(name), Some((digest, size))) => {
                let held = self
                    .nodes
                    .get(node_name)
                    .and_then(|n| n.info.image_digests.get(name));
                (held != Some(digest)).then(|| {
                    format!(
                        "{node_name} is fetching image `{name}` ({}, {}) from the server",
                        gaffer_api::units::ByteSize(*size),
                        &digest[..digest.len().min(19)]
                    )
                })
            }
            _ => None,
        };
        let reservation = job.reservation(&ports);
        self.batch.tasks.push(row);
        self.batch.attempts.push((
            jid,
            index,
            AttemptView {
                attempt: key.attempt,
                node: node_name.to_string(),
                state: TaskState::Assigned,
                started_at: None,
                ended_at: None,
                exit_code: None,
                signal: None,
                message: fetching,
                max_rss_bytes: None,
                cpu_secs: None,
                outputs: Vec::new(),
                ip: None,
                ports,
                ready: None,
            },
        ));
        self.nodes
            .get_mut(node_name)
            .expect("placed on a known node")
            .ledger
            .reserve(key, reservation);
        self.fx.send(node_name, ServerMsg::Start(Box::new(launch)));
        self.event(
            now,
            jid,
            Some((index, key.attempt)),
            Some("pending"),
            "assigned",
            node_name.to_string(),
        );
        Ok(())
    }
}

/// The message that tells a node to run attempt `key` of `job`.
fn launch(
    job: &ActiveJob,
    key: AttemptKey,
    catalog: &BTreeMap<String, (String, u64)>,
) -> TaskLaunch {
    let spec = &job.row.spec;
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend([
        ("GAFFER_JOB_ID".to_string(), key.job.to_string()),
        ("GAFFER_JOB_NAME".to_string(), job.row.name.clone()),
        ("GAFFER_TASK_INDEX".to_string(), key.index.to_string()),
        ("GAFFER_TASK_ID".to_string(), key.task_id()),
        ("GAFFER_ATTEMPT".to_string(), key.attempt.to_string()),
        (
            "GAFFER_ARRAY_SIZE".to_string(),
            job.row.counts.total.to_string(),
        ),
    ]);
    if let Some(slurm) = &spec.slurm {
        env.extend(slurm_env(job, key, slurm));
    }
    let array_id = spec
        .slurm
        .map_or(key.index as u64, |s| s.array_id(key.index));
    let log_file = |p: &Option<String>| {
        p.as_ref()
            .map(|p| gaffer_api::batch::log_path(p, key.job, array_id, &job.row.name))
    };
    if let Some(n) = spec.replicas {
        let peers: Vec<String> = (0..n)
            .map(|i| gaffer_api::cluster::hostname(&job.row.name, i))
            .collect();
        env.extend([
            ("GAFFER_REPLICA".to_string(), key.index.to_string()),
            ("GAFFER_REPLICAS".to_string(), n.to_string()),
            ("GAFFER_PEERS".to_string(), peers.join(" ")),
        ]);
        // A host replica's hostfile is in its attempt directory: its agent names it.
        if spec.image.is_some() {
            env.push((
                "GAFFER_HOSTFILE".to_string(),
                gaffer_api::cluster::HOSTFILE.to_string(),
            ));
        }
    }
    TaskLaunch {
        key,
        name: job.row.name.clone(),
        argv: spec.argv(),
        env,
        workdir: spec.workdir.clone(),
        image: spec.image.clone(),
        image_archive: spec
            .image
            .as_ref()
            .and_then(|name| catalog.get(name).cloned()),
        timeout_ms: spec.timeout.map(|t| t.0),
        kill_grace_ms: spec.kill_grace.unwrap_or(DEFAULT_KILL_GRACE).0,
        outputs: spec.outputs.clone(),
        cpus: spec.cpus(),
        memory: spec.resources.memory.map(|m| m.0),
        pids: spec.resources.pids,
        user: spec.user.clone(),
        network: spec.net(),
        ports: Vec::new(),
        replicas: spec.replicas,
        ready_cmd: spec.ready_cmd.clone(),
        shared_dir: spec.shared_dir.clone(),
        mounts: spec.mounts.clone(),
        script: spec.script.clone(),
        stdout_file: log_file(&spec.stdout_file),
        stderr_file: log_file(&spec.stderr_file),
    }
}

/// The variables Slurm gives a batch job, for a job submitted with `#SBATCH` directives.
fn slurm_env(
    job: &ActiveJob,
    key: AttemptKey,
    slurm: &gaffer_api::batch::SlurmCompat,
) -> Vec<(String, String)> {
    let spec = &job.row.spec;
    let number = key.job.0.to_string();
    let mut env = vec![
        ("SLURM_JOB_ID", number.clone()),
        ("SLURM_JOBID", number.clone()),
        ("SLURM_JOB_NAME", job.row.name.clone()),
        (
            "SLURM_CPUS_PER_TASK",
            (spec.cpus().ceil() as u64).to_string(),
        ),
        ("SLURM_NTASKS", "1".to_string()),
        ("SLURM_JOB_NUM_NODES", "1".to_string()),
        (
            "SLURM_RESTART_COUNT",
            key.attempt.saturating_sub(1).to_string(),
        ),
    ];
    if let Some(d) = &spec.submit_dir {
        env.push(("SLURM_SUBMIT_DIR", d.clone()));
    }
    if let Some(m) = spec.resources.memory {
        env.push(("SLURM_MEM_PER_NODE", (m.0 >> 20).to_string()));
    }
    if let Some(n) = spec.array {
        env.extend([
            ("SLURM_ARRAY_JOB_ID", number),
            ("SLURM_ARRAY_TASK_ID", slurm.array_id(key.index).to_string()),
            ("SLURM_ARRAY_TASK_COUNT", n.to_string()),
            ("SLURM_ARRAY_TASK_MIN", slurm.array_id(0).to_string()),
            (
                "SLURM_ARRAY_TASK_MAX",
                slurm.array_id(n.saturating_sub(1)).to_string(),
            ),
            ("SLURM_ARRAY_TASK_STEP", slurm.array_step.max(1).to_string()),
        ]);
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The host ports of an attempt: those the spec fixes, and for the others the first free ones
/// of [`AUTO_PORTS`] on the node (`held`: the node's taken ports).
fn map_ports(want: &[PortSpec], held: Option<&HashSet<(u16, u8)>>) -> Vec<PortMapping> {
    let mut taken: HashSet<(u16, u8)> = held.cloned().unwrap_or_default();
    for p in want {
        if let Some(h) = p.host {
            taken.insert(port_key(h, p.protocol));
        }
    }
    want.iter()
        .map(|p| {
            let host = p.host.unwrap_or_else(|| {
                let free = AUTO_PORTS
                    .clone()
                    .find(|h| !taken.contains(&port_key(*h, p.protocol)))
                    .unwrap_or(*AUTO_PORTS.end());
                taken.insert(port_key(free, p.protocol));
                free
            });
            PortMapping {
                host,
                container: p.container,
                protocol: p.protocol,
            }
        })
        .collect()
}
