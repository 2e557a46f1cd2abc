//! Generation on the daemon, on the tiny model: each checkpoint's samples answered by the
//! engine after it is written (and after a restart, where they were left unanswered);
//! `POST /v1/jobs/{id}/generate`: a checkpoint's answers beside its base's,
//! streamed from a worker process, the same tokens as `orpod generate` in the foreground; bad
//! requests; clients at once on one slot; a request that does not fit waits with a reason, then
//! gives up.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt as _;
use orpo_api::{GenerateEvent, GenerateRequest, JobState};
use orpo_tests::{submit_tiny, TestDaemon};
use orpo_trainer::checkpoint::Sample;

use crate::{exe, fixture};

/// Every event of a generate stream, until it ends (panics after two minutes).
async fn events(d: &TestDaemon, id: u64, req: &GenerateRequest) -> Vec<GenerateEvent> {
    let stream = d.client.generate(id, req).await.expect("generate");
    let all = tokio::time::timeout(Duration::from_secs(120), stream.collect::<Vec<_>>())
        .await
        .unwrap_or_else(|_| panic!("the stream did not end; daemon log:\n{}", d.log()));
    all.into_iter().map(|e| e.expect("event")).collect()
}

fn read_samples(path: &Path) -> Vec<Sample> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_checkpoint_answers_beside_its_base_from_a_worker_process() {
    let (tmp, model) = fixture();
    let state = tmp.path().join("state");
    let d = TestDaemon::start(exe(), &state, "").await;
    let job = submit_tiny(&d, &model, 8, "max_steps = 4\nlearning_rate = 0.05").await;
    d.wait_state(job.id, JobState::Succeeded, Duration::from_secs(120))
        .await;

    // Each checkpoint's samples come from the generation engine, in a worker the daemon
    // admitted after the checkpoint: the same answers as `orpod generate --samples` on a copy.
    assert_eq!(d.wait_samples(job.id).await, ["step-4", "final"]);
    let log = d.client.events(job.id, None).await.unwrap();
    for name in ["step-4", "final"] {
        assert!(
            log.iter()
                .any(|e| e.message == format!("samples of {name} written")
                    && e.checkpoint.as_deref() == Some(name)),
            "{log:?}"
        );
    }
    let final_dir = state.join(format!("jobs/{}/final", job.id));
    let daemons = read_samples(&final_dir.join("samples.json"));
    assert_eq!(daemons.len(), 3);
    let copy = tmp.path().join("final-copy");
    std::fs::create_dir(&copy).unwrap();
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "sample_prompts.json",
    ] {
        std::fs::copy(final_dir.join(f), copy.join(f)).unwrap();
    }
    let out = Command::new(exe())
        .arg("generate")
        .arg(&copy)
        .arg("--base")
        .arg(&model)
        .arg("--samples")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read_samples(&copy.join("samples.json")), daemons);
    let printed: Vec<Sample> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, daemons);

    let prompts = vec!["Question 1: what is 1 plus 1?".to_string(), "Hi".into()];
    let req = GenerateRequest {
        prompts: prompts.clone(),
        compare_base: true,
        max_new_tokens: Some(8),
        ..Default::default()
    };
    let all = events(&d, job.id, &req).await;
    match &all[0] {
        GenerateEvent::Started {
            device,
            checkpoint,
            estimate_bytes,
        } => {
            assert_eq!((device.as_str(), checkpoint.as_str()), ("cpu", "final"));
            assert!(*estimate_bytes > 0);
        }
        other => panic!("first event: {other:?}"),
    }
    assert_eq!(all.last(), Some(&GenerateEvent::Done {}), "{all:?}");
    // The base answers every prompt first, then the checkpoint; each answer is its tokens.
    let mut answers = Vec::new();
    let mut streamed: Vec<(String, usize, Vec<u32>, String)> = Vec::new();
    for e in &all {
        match e {
            GenerateEvent::Token {
                model,
                prompt,
                token,
                text,
            } => match streamed.last_mut() {
                Some((m, p, tokens, t)) if m == model && p == prompt => {
                    tokens.push(*token);
                    t.push_str(text);
                }
                _ => streamed.push((model.clone(), *prompt, vec![*token], text.clone())),
            },
            GenerateEvent::Answer {
                model,
                prompt,
                text,
                tokens,
                finish,
                ..
            } => {
                assert!(finish == "stop" || finish == "length", "{finish}");
                assert!(tokens.len() <= 8);
                answers.push((model.clone(), *prompt, tokens.clone(), text.clone()));
            }
            _ => {}
        }
    }
    let order: Vec<(&str, usize)> = answers.iter().map(|a| (a.0.as_str(), a.1)).collect();
    assert_eq!(
        order,
        [("base", 0), ("base", 1), ("tuned", 0), ("tuned", 1)]
    );
    let non_empty: Vec<_> = answers
        .iter()
        .filter(|a| !a.2.is_empty())
        .cloned()
        .collect();
    assert_eq!(streamed, non_empty, "the tokens streamed are the answers");
    assert!(
        d.log().contains("generation started"),
        "it ran in a worker process: {}",
        d.log()
    );

    // The same engine as `orpod generate` in the foreground: the same greedy tokens.
    let ckpt = state.join(format!("jobs/{}/final", job.id));
    let mut cmd = Command::new(exe());
    cmd.arg("generate")
        .arg(&ckpt)
        .arg("--base")
        .arg(&model)
        .args(["--json", "--max-new-tokens", "8"]);
    for p in &prompts {
        cmd.args(["--prompt", p]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let foreground: Vec<Vec<u32>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::from_value(v["tokens"].clone()).unwrap()
        })
        .collect();
    let tuned: Vec<Vec<u32>> = answers[2..].iter().map(|a| a.2.clone()).collect();
    assert_eq!(tuned, foreground);

    // Bad requests are refused before anything runs, naming the problem.
    let bad = |req: GenerateRequest, status: u16, want: &'static str| {
        let client = d.client.clone();
        async move {
            let err = match client.generate(job.id, &req).await {
                Ok(_) => panic!("{req:?} was accepted"),
                Err(e) => e,
            };
            let text = err.to_string();
            assert!(
                matches!(err, orpo_api::client::ClientError::Api { status: s, .. } if s == status),
                "{text}"
            );
            assert!(text.contains(want), "{text:?} lacks {want:?}");
        }
    };
    let hi = || GenerateRequest {
        prompts: vec!["hi".into()],
        ..Default::default()
    };
    bad(GenerateRequest::default(), 400, "prompts: give 1 to 8").await;
    bad(
        GenerateRequest {
            temperature: Some(-1.0),
            ..hi()
        },
        400,
        "temperature",
    )
    .await;
    bad(
        GenerateRequest {
            max_new_tokens: Some(u32::MAX as usize),
            ..hi()
        },
        400,
        "max_new_tokens = 4294967295: at most 4096",
    )
    .await;
    bad(
        GenerateRequest {
            checkpoint: Some("step-99".into()),
            ..hi()
        },
        404,
        "has no checkpoint \"step-99\"",
    )
    .await;
    let err = d.client.generate(job.id + 100, &hi()).await.err().unwrap();
    assert_eq!(err.code(), Some("job_not_found"));
    let raw = d
        .client
        .http()
        .post(d.client.url(&format!("/v1/jobs/{}/generate", job.id)))
        .header("content-type", "application/json")
        .body(r#"{"prompts": ["hi"], "temperature": 1e999}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400, "{:?}", raw.text().await);

    // Several clients at once on one generation slot: each gets the same greedy answer, and
    // those that found the slot taken were told so while they waited.
    // A daemon that stopped before answering a checkpoint's samples leaves them to the next.
    std::fs::remove_file(final_dir.join("samples.json")).unwrap();
    let mut d = d;
    d.stop();
    let mut d = TestDaemon::start(exe(), &state, "max_generations = 1\n").await;
    assert_eq!(d.wait_samples(job.id).await, ["step-4", "final"]);
    assert_eq!(read_samples(&final_dir.join("samples.json")), daemons);
    let same = GenerateRequest {
        prompts: vec!["Question 3: what is 3 plus 3?".into()],
        max_new_tokens: Some(8),
        ..Default::default()
    };
    let all = futures_util::future::join_all((0..4).map(|_| events(&d, job.id, &same))).await;
    let answers: Vec<Vec<u32>> = all
        .iter()
        .map(|evs| {
            assert_eq!(evs.last(), Some(&GenerateEvent::Done {}), "{evs:?}");
            evs.iter()
                .find_map(|e| match e {
                    GenerateEvent::Answer { tokens, .. } => Some(tokens.clone()),
                    _ => None,
                })
                .unwrap()
        })
        .collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let mut waited = 0;
    for e in all.iter().flatten() {
        if let GenerateEvent::Waiting { reason } = e {
            waited += 1;
            assert_eq!(
                reason,
                "waiting for a generation slot: 1 generation(s) running (max_generations = 1)"
            );
        }
    }
    eprintln!("{waited} of 4 requests waited for the slot");
    d.stop();

    // A request that cannot fit (all memory kept as headroom) waits, saying why, then gives
    // up after generate_wait_s; the stream says so and nothing ran.
    let d = TestDaemon::start(
        exe(),
        &state,
        "headroom_mib = 1000000000\ngenerate_wait_s = 2\n",
    )
    .await;
    let all = events(&d, job.id, &hi()).await;
    // One `waiting` per reason: the host's free memory in it moves, so there may be several.
    let (last, waits) = all.split_last().unwrap();
    assert!(!waits.is_empty(), "{all:?}");
    for w in waits {
        match w {
            GenerateEvent::Waiting { reason } => {
                assert!(reason.starts_with("waiting for memory: needs"), "{reason}")
            }
            other => panic!("only waiting before the end: {other:?}"),
        }
    }
    match last {
        GenerateEvent::Error { message, .. } => assert!(
            message.contains("waited 2 s (generate_wait_s) and still waiting for memory"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}
