#!/usr/bin/env python3
"""Breaks each importance formula in turn (flip a sign, drop a square, ...), rebuilds the property tests,
runs them, reports which properties failed, and restores the file. Every mutation must make at least one
property fail. Usage: scripts/mutate-importance.py [name-substring ...] (about 40 s per mutation)."""
import os, subprocess, sys, re
root=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..') + '/'
muts=[
 ('term gradient sign', 'src/Continual.Core/Penalties.Quadratic.fs', '            let g = d.mul q.Curvature\n            g, g.dot d', '            let g = d.mul(q.Curvature).neg()\n            g, g.dot d'),
 ('term value drops square', 'src/Continual.Core/Penalties.Quadratic.fs', '            let g = d.mul q.Curvature\n            g, g.dot d', '            let g = d.mul q.Curvature\n            g, g.sum()'),
 ('closed-form gradient sign', 'src/Continual.Core/Penalties.Quadratic.fs', '        gradients.addcmul_(d, q.Curvature, (1.0).ToScalar()) |> ignore', '        gradients.addcmul_(d, q.Curvature, (-1.0).ToScalar()) |> ignore'),
 ('closed-form gradient without curvature', 'src/Continual.Core/Penalties.Quadratic.fs', '        gradients.addcmul_(d, q.Curvature, (1.0).ToScalar()) |> ignore', '        gradients.add_(d) |> ignore'),
 ('valueAt drops square', 'src/Continual.Core/Penalties.Quadratic.fs', '        use g = d.mul q.Curvature\n        use v = g.dot d', '        use g = d.mul q.Curvature\n        use v = g.sum()'),
 ('create drops factor 2', 'src/Continual.Core/Penalties.Quadratic.fs', '        let h = 2.0 * coefficient scale lambda', '        let h = coefficient scale lambda'),
 ('consolidate drops offset', 'src/Continual.Core/Penalties.Quadratic.fs', '              Offset = c * spread.sum().ToDouble()', '              Offset = 0.0'),
 ('closed form abs not square', 'src/Continual.Core/Penalties.Gradients.fs', '                use d2 = d.square ()', '                use d2 = d.abs ()'),
 ('backward without relu mask', 'src/Continual.Core/Penalties.Gradients.fs', '            deltas.[l] <- back.mul mask', '            deltas.[l] <- back.alias ()'),
 ('MAS signed', 'src/Continual.Core/Penalties.Gradients.fs', '                use da = d.abs ()', '                use da = d.alias ()'),
 ('weighted ignored', 'src/Continual.Core/Importance.Estimates.fs', '        | LabelWeighted -> NegativeLogLikelihood(labels, true), rng', '        | LabelWeighted -> NegativeLogLikelihood(labels, false), rng'),
 ('online merge halves new', 'src/Continual.Core/Methods/OnlineEwc.fs', '        ParameterTensors.combine gamma old 1.0 current', '        ParameterTensors.combine gamma old 0.5 current'),
 ('ewc++ weights swapped', 'src/Continual.Core/Importance.Estimates.fs', "let rng' = blend (1.0 - alpha) (alpha / float count) r rng", "let rng' = blend alpha ((1.0 - alpha) / float count) r rng"),
 ('fused blend abs not square', 'src/Continual.Core/Penalties.Gradients.fs', '            use squares = d.square ()', '            use squares = d.abs ()'),
 ('fused blend decay and scale swapped', 'src/Continual.Core/Penalties.Gradients.fs', 'weight.addmm_(transposed, inputSquares, beta, alpha)', 'weight.addmm_(transposed, inputSquares, alpha, beta)'),
 ('fused blend bias not blended', 'src/Continual.Core/Penalties.Gradients.fs', 'bias.addmv_(transposed, ones, beta, alpha) |> ignore', 'bias.mul_(beta.ToScalar()) |> ignore'),
 ('fused blend ignores label weights', 'src/Continual.Core/Penalties.Gradients.fs', 'squares.mul(w.unsqueeze 1L)', 'squares.alias ()'),
 ('scp convex swapped', 'src/Continual.Core/Importance.Estimates.fs', '        ParameterTensors.combine alpha x (1.0 - alpha) y', '        ParameterTensors.combine (1.0 - alpha) x alpha y'),
 ('si consolidate abs', 'src/Continual.Core/Methods/Si.fs', '            use denominator = d.square().add(xi.ToScalar())', '            use denominator = d.abs().add(xi.ToScalar())'),
 ('rwalk drops half', 'src/Continual.Core/Methods/Rwalk.fs', 'f.mul(d.square()).mul(0.5.ToScalar())', 'f.mul(d.square())'),
 ('path without lr', 'src/Continual.Core/Importance.Estimates.fs', 'a.addcmul_(g, g, learningRate.ToScalar())', 'a.addcmul_(g, g, (1.0).ToScalar())'),
 ('effective slices no sqrt', 'src/Continual.Core/Importance.Estimates.fs', '            use scale = values.clamp_min(0.0.ToScalar()).sqrt()', '            use scale = values.clamp_min(0.0.ToScalar())'),
 ('rwalk normalisation dropped', 'src/Continual.Core/Methods/Rwalk.fs', '        let b = if smax > 0.0 then 1.0 / smax else 0.0', '        let b = 1.0'),
]
only = sys.argv[1:] 
for name, path, old, new in muts:
    if only and not any(o in name for o in only): continue
    p=root+path; s=open(p).read()
    assert s.count(old)==1, (name, s.count(old))
    open(p,'w').write(s.replace(old,new))
    try:
        b=subprocess.run(f"cd {root} && dotnet build tests/Continual.Properties -c Release 2>&1 | grep -E ' error |rror\\(s\\)' | sort -u | head -3",shell=True,capture_output=True,text=True).stdout
        if '0 Error(s)' not in b:
            print(f"[{name}] BUILD FAILED: {b}"); continue
        r=subprocess.run(f"cd {root} && dotnet run --project tests/Continual.Properties -c Release --no-build -- --summary 2>&1",shell=True,capture_output=True,text=True)
        out=r.stdout
        failed=[l.strip() for l in out.splitlines() if l.startswith('\t') and False]
        clean=re.sub(r'\x1b\[[0-9;]*m','',out)
        m=re.search(r'Failed:\s*(\d+)', clean); e=re.search(r'Errored:\s*(\d+)', clean)
        fails=re.findall(r'ERR\] (.*?) (?:failed|errored)', clean)
        print(f"[{name}] rc={r.returncode} failed={m.group(1) if m else '?'} errored={e.group(1) if e else '?'}")
        for f in sorted(set(fails))[:14]: print("     ", f)
    finally:
        open(p,'w').write(s)
