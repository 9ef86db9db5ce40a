#!/usr/bin/env python3
"""The formula mutations the distillation properties must catch: each breaks one line of
src/Continual.Core/Distillation.Losses.fs or Replay.Herding.fs, rebuilds, runs the matching test list
and prints what failed; every mutation must fail at least one property. The source is restored after
each. Usage: scripts/mutate-distillation.py [NAME ...] (default: all)."""
import os, subprocess, sys, re
root=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..') + '/'
core=root+'src/Continual.Core/'
M=[
 ('softmax T', core+'Distillation.Losses.fs', 'torch.nn.functional.softmax(logits.div(scalar temperature), -1L)', 'torch.nn.functional.softmax(logits.mul(scalar temperature), -1L)', 'distillation.kd'),
 ('kd no T^2', core+'Distillation.Losses.fs', 'perRow.mean().mul(scalar (temperature * temperature))', 'perRow.mean().mul(scalar temperature)', 'distillation.kd'),
 ('kd reversed KL', core+'Distillation.Losses.fs', 'let perRow = logTeacher.exp().mul(logTeacher.sub(logStudent)).sum(-1L)', 'let perRow = logStudent.exp().mul(logTeacher.sub(logStudent)).sum(-1L)', 'distillation.kd'),
 ('soft CE sign', core+'Distillation.Losses.fs', 'target.mul(logStudent).sum(-1L).mean().neg()', 'target.mul(logStudent).sum(-1L).mean()', 'distillation.kd'),
 ('fitnets half', core+'Distillation.Losses.fs', 'flatten(1L).sum(1L).mean().mul(scalar 0.5)', 'flatten(1L).sum(1L).mean().mul(scalar 1.0)', 'distillation.fitnets'),
 ('nst cross term', core+'Distillation.Losses.fs', '.sub((kernel s t).mul(scalar 2.0)).mean()', '.sub((kernel s t).mul(scalar 1.0)).mean()', 'distillation.nst'),
 ('nst no normalise', core+'Distillation.Losses.fs', 'let s = l2NormaliseRows (mapAsChannels studentMap)', 'let s = mapAsChannels studentMap', 'distillation.nst'),
 ('at no normalise', core+'Distillation.Losses.fs', 'let qs = l2NormaliseRows (attentionMap p student)', 'let qs = attentionMap p student', 'distillation.attention'),
 ('at no abs', core+'Distillation.Losses.fs', '(mapAsChannels featureMap).abs().pow(scalar p).sum(1L)', '(mapAsChannels featureMap).pow(scalar p).sum(1L)', 'distillation.attention'),
 ('rkd no mu', core+'Distillation.Losses.fs', '        distances.div mu', '        distances', 'distillation.rkd'),
 ('rkd angle unnormalised', core+'Distillation.Losses.fs', 'let units = l2NormaliseRows(differences).mul(', 'let units = differences.mul(', 'distillation.rkd'),
 ('pod no height', core+'Distillation.Losses.fs', 'l2NormaliseRows (torch.cat([| width; height |], 1L))', 'l2NormaliseRows (torch.cat([| width; width |], 1L))', 'distillation.pod'),
 ('pod flat unnormalised', core+'Distillation.Losses.fs', '(rowNorms ((l2NormaliseRows studentEmbeddings).sub(l2NormaliseRows teacherEmbeddings))).mean()', '(rowNorms (studentEmbeddings.sub(l2NormaliseRows teacherEmbeddings))).mean()', 'distillation.pod'),
 ('sd bottom vectors', core+'Distillation.Losses.fs', 'vh.narrow(0L, 0L, int64 m).t()', 'vh.narrow(0L, vh.shape.[0] - int64 m, int64 m).t()', 'distillation.sd'),
 ('sd factor', core+'Distillation.Losses.fs', '.pow(scalar 2.0).sum().mul(scalar -2.0).add(scalar (2.0 * m))', '.pow(scalar 2.0).sum().mul(scalar -1.0).add(scalar (2.0 * m))', 'distillation.sd'),
 ('sd not squared', core+'Distillation.Losses.fs', 'basisA.t().matmul(basisB).pow(scalar 2.0).sum()', 'basisA.t().matmul(basisB).abs().sum()', 'distillation.sd'),
 ('relation no root', core+'Distillation.Losses.fs', '.clamp_min(scalar 1e-24).pow(scalar (1.0 / p))', '.clamp_min(scalar 1e-24)', 'distillation.relation'),
 ('herding running mean', core+'Replay.Herding.fs', 'let diff = mean.[j] - (sum.[j] + float f.[j]) / float k', 'let diff = mean.[j] - float f.[j]', 'replay.herding'),
 ('herding repeats', core+'Replay.Herding.fs', '                    if not chosen.[i] then', '                    if true then', 'replay.herding'),
 ('sd grad no null part', core+'Distillation.Losses.fs', 'v2.matmul(c.div gaps).add(nullPart)', 'v2.matmul(c.div gaps)', 'distillation.sd'),
 ('sd grad gap sign', core+'Distillation.Losses.fs', 'let gaps = l1.unsqueeze(0L).sub(l2.unsqueeze 1L)', 'let gaps = l2.unsqueeze(1L).sub(l1.unsqueeze 0L)', 'distillation.sd'),
 ('sd grad factor', core+'Distillation.Losses.fs', 'let w = half.matmul(v1.t()).add(v1.matmul(half.t())).mul(scalar -2.0)', 'let w = half.matmul(v1.t()).add(v1.matmul(half.t())).mul(scalar -1.0)', 'distillation.sd'),
 ('sd autograd svd', core+'Distillation.Losses.fs', 'subspaceTerm m (teacherFeatures.index_select(0L, index)) (studentFeatures.index_select(0L, index)))', 'let mk = min m (min rows.Length (int studentFeatures.shape.[1])) in Some(projectionDistance (subspaceBasis mk (studentFeatures.index_select(0L, index))) (subspaceBasis mk (teacherFeatures.index_select(0L, index)))))', 'distillation.sd'),
 ('sd term bottom vectors', core+'Distillation.Losses.fs', 'let v1 = vhs.narrow(0L, 0L, m).t() // [D, m]', 'let v1 = vhs.narrow(0L, vhs.shape.[0] - m, m).t() // [D, m]', 'distillation.sd'),
 ('sd teacher bottom vectors', core+'Distillation.Losses.fs', 'let basisT = vht.narrow(0L, 0L, m).t() // [D, m]', 'let basisT = vht.narrow(0L, vht.shape.[0] - m, m).t() // [D, m]', 'distillation.sd'),
]
only = sys.argv[1:] 
for name, path, old, new, flt in M:
    if only and name not in only: continue
    src=open(path).read()
    assert src.count(old)==1, (name, src.count(old))
    open(path,'w').write(src.replace(old,new))
    try:
        b=subprocess.run(['dotnet','build',root+'tests/Continual.Properties','-c','Release'],capture_output=True,text=True)
        if 'Build succeeded' not in b.stdout:
            print(f'{name}: BUILD FAILED', [l for l in b.stdout.splitlines() if ' error ' in l][:2], flush=True); continue
        r=subprocess.run(['dotnet','run','--project',root+'tests/Continual.Properties','-c','Release','--no-build','--','--summary','--filter-test-list',flt],capture_output=True,text=True)
        out=re.sub(r'\x1b\[[0-9;?]*[A-Za-z]','',r.stdout)
        failed=[l.strip() for l in out.split('Failed:')[1].split('Errored:')[0].splitlines()[1:] if l.strip()] if 'Failed:' in out else []
        errored=[l.strip() for l in out.split('Errored:')[1].splitlines()[1:] if l.strip().startswith(flt)] if 'Errored:' in out else []
        print(f'{name}: exit {r.returncode}; failed {len(failed)} {failed}; errored {len(errored)} {errored}', flush=True)
    finally:
        open(path,'w').write(src)
b=subprocess.run(['dotnet','build',root+'tests/Continual.Properties','-c','Release'],capture_output=True,text=True)
print('restored build:', 'Build succeeded' in b.stdout)
