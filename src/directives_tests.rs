use super::*;

fn args(d: &Directives) -> String {
    d.args.join(" ")
}

#[test]
fn gaffer_directives_are_cli_flags() {
    let d = parse("#!/bin/sh\n#GAFFER --cpus 2 --name 'my job'\n# a comment\n\n#GAFFER --retries 3\necho hi\n#GAFFER --late 1\n").unwrap();
    assert_eq!(args(&d), "--cpus 2 --name my job --retries 3");
    assert!(!d.slurm);
}

#[test]
fn sbatch_directives_translate() {
    let body = "#!/bin/bash\n\
        #SBATCH --job-name=align\n\
        #SBATCH -c 4\n\
        #SBATCH --mem=4000\n\
        #SBATCH -t 1-02:03:04\n\
        #SBATCH --output=logs/%x-%A_%a.out -e err.txt\n\
        #SBATCH --array=1-10:3%2\n\
        #SBATCH --dependency=afterok:12:13,afterany:14,singleton\n\
        #SBATCH -D /data --hold\n\
        #SBATCH --ntasks=1 --partition=gpu --mail-type END\n\
        srun hostname\n";
    let d = parse(body).unwrap();
    assert!(d.slurm);
    assert_eq!(
        args(&d),
        "--name align --cpus 4 --memory 4000M --timeout 93784s \
         --stdout logs/%x-%A_%a.out --stderr err.txt --array 4%2 \
         --after 12,13 --after-any 14 --singleton --workdir /data --hold"
    );
    assert_eq!(d.array_ids, Some((1, 3)));
    assert_eq!(d.unsupported, vec!["--partition=gpu", "--mail-type END"]);
    assert_eq!(d.export, Export::All);
}

#[test]
fn slurm_times() {
    for (t, secs) in [
        ("30", Some(1800)),
        ("5:30", Some(330)),
        ("1:00:00", Some(3600)),
        ("2-0", Some(172_800)),
        ("1-1:30", Some(91_800)),
        ("1-0:0:5", Some(86_405)),
        ("UNLIMITED", None),
    ] {
        assert_eq!(slurm_time(t).unwrap(), secs, "{t}");
    }
    for bad in ["", "1:2:3:4", "x", "1-", "0", "99999999999999999-0"] {
        assert!(slurm_time(bad).is_err(), "{bad}");
    }
}

#[test]
fn slurm_arrays() {
    assert_eq!(slurm_array("0-9").unwrap(), (10, 0, 1, None));
    assert_eq!(slurm_array("5").unwrap(), (1, 5, 1, None));
    assert_eq!(slurm_array("1,3,5%1").unwrap(), (3, 1, 2, Some(1)));
    assert!(slurm_array("1,2,5").is_err());
    assert!(slurm_array("9-1").is_err());
    assert!(
        slurm_array("0-4294967295").is_err(),
        "too many, not an overflow"
    );
    assert!(slurm_array("4294967295,4294967295").is_err());
}

#[test]
fn bad_directives_name_the_line() {
    let e = parse("#!/bin/sh\n#SBATCH --time=xx\n").unwrap_err();
    assert!(e.starts_with("line 2:"), "{e}");
    let e = parse("#GAFFER echo hi\n").unwrap_err();
    assert!(e.contains("line 1") && e.contains("echo"), "{e}");
    let e = parse("#SBATCH --dependency=after:1\n").unwrap_err();
    assert!(e.contains("`after` is not supported"), "{e}");
}

#[test]
fn exports_and_memory() {
    let d = parse("#SBATCH --export=NONE,A=1,B\n#SBATCH --mem-per-cpu=1G -c 2\n").unwrap();
    assert_eq!(d.export, Export::Only(vec!["A=1".into(), "B".into()]));
    assert_eq!(args(&d), "--cpus 2 --memory 2147483648");
    let d = parse("#SBATCH --export=ALL,X=2\n").unwrap();
    assert_eq!(d.export, Export::AllAnd(vec!["X=2".into()]));
}

#[test]
fn scripts_and_binaries() {
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("a.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    assert!(is_script(&script));
    let plain = d.path().join("notes.txt");
    std::fs::write(&plain, "echo hi\n").unwrap();
    assert!(!is_script(&plain), "not executable, no #!");
    assert!(!is_script(Path::new("/bin/true")), "a binary is a command");
    assert!(!is_script(d.path()), "a directory");
}
